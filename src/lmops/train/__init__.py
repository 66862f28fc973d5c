"""Training stage: pretraining, SFT, LoRA/QLoRA/prefix/prompt tuning, reward models,
DPO/KTO/ORPO (through TRL) and PPO; tracked in the store, resumable, distributed."""
