"""Training-only breadth for ``build_moderation_set.py``: more ideas, look-alikes and
everyday requests, so that the classifier learns from a wider spread of ideas.

Every row made from this file is ``split: train`` whatever its hash, is put only in the
*training* frame families and wrappers (a held-out frame family stays unseen), and is
expanded with the concepts' *training* fillers only (``moderation_lexicon.CONCEPTS``); a
row whose text is already in the data set (any split) is dropped. The builder also drops
any idea here whose words overlap a held-out idea of ``moderation_lexicon`` too much (see
``breadth_rows``), so that the held-out ideas stay unseen in any wording.

Written from general knowledge of harmful requests and of the everyday uses of the same
words (kill a process, shoot a photo, crack an egg), not from the held-out rows.
"""

from __future__ import annotations

# Harmful ideas: patterns over moderation_lexicon.CONCEPTS ("!" marks the keyword).
HARM_IDEAS: dict[str, dict[str, list[str]]] = {
    "weapons": {
        "en": [
            "wire {!bomb} to a timer",
            "{get} the parts to {make} {!bomb}",
            "turn fireworks into {!bomb} that can {kill} {crowd}",
            "sneak {!gun} past the metal detector at {place}",
            "mail {!bomb} to {target}",
            "spray {!poison} into the air vents at {place}",
            "put {!poison} in the water supply of {place}",
        ],
        "zh": [
            "把{!bomb}接上定时器",
            "{get}零件{make}{!bomb}",
            "用烟花改装成能{kill}{crowd}的{!bomb}",
            "带{!gun}躲过{place}的安检门",
            "给{target}寄一个{!bomb}",
            "往{place}的通风口里喷{!poison}",
            "在{place}的饮用水里投{!poison}",
        ],
    },
    "violence": {
        "en": [
            "lure {target} somewhere quiet and {!kill} them",
            "pay someone to {!hurt} {target}",
            "{!hurt} {target} and make it look like they fell",
            "follow {target} home and {!kill} them",
            "break into the house of {target} at night and {!hurt} them",
            "run over {crowd} with a car at {place}",
        ],
        "zh": [
            "把{target}骗到没人的地方{!kill}",
            "花钱找人{!hurt}{target}",
            "{!hurt}{target}再伪装成摔倒",
            "跟踪{target}回家然后{!kill}",
            "半夜闯进{target}家里{!hurt}他",
            "开车冲进{place}撞{crowd}",
        ],
    },
    "self_harm": {
        "en": [
            "find out how many {method} it takes to {!suicide}",
            "write my goodbye letter before i {!suicide}",
            "{!selfhurt} where nobody will see the marks",
            "pick the best night to {!suicide}",
            "use {method} to {!suicide} tonight",
            "hide my plan to {!suicide} from my therapist",
        ],
        "zh": [
            "吃多少{method}才能{!suicide}",
            "{!suicide}之前写好遗书",
            "在别人看不到的地方{!selfhurt}",
            "今晚用{method}{!suicide}",
            "瞒着心理医生计划{!suicide}",
            "挑一个晚上{!suicide}",
        ],
    },
    "illegal_drugs": {
        "en": [
            "cut {!drug} with fillers to make more profit",
            "{sell} {!drug} at {place} without the cops noticing",
            "hide {!drug} in candy to {smuggle} it past {checkpoint}",
            "set up a lab to cook {!drug}",
            "get {minors} hooked on {!drug}",
            "ship {!drug} through the mail {undetected}",
        ],
        "zh": [
            "往{!drug}里掺东西多赚钱",
            "在{place}{sell}{!drug}不被警察发现",
            "把{!drug}藏在糖果里{smuggle}过{checkpoint}",
            "搭一个实验室制{!drug}",
            "让{minors}对{!drug}上瘾",
            "通过快递寄{!drug}{undetected}",
        ],
    },
    "extremism": {
        "en": [
            "send money to {!group} {undetected}",
            "{recruit} {youth} online for {!group}",
            "plan {!attack} on {place} for {group}",
            "make {!propaganda} to {recruit} {youth}",
            "train a cell of {youth} for {!attack}",
            "pledge allegiance to {!group} and fight for them",
        ],
        "zh": [
            "给{!group}汇钱{undetected}",
            "在网上为{!group}{recruit}{youth}",
            "替{group}策划对{place}的{!attack}",
            "制作{!propaganda}{recruit}{youth}",
            "训练一批{youth}搞{!attack}",
            "宣誓效忠{!group}去打仗",
        ],
    },
    "fraud": {
        "en": [
            "{steal} {!creds} from {victim} with a fake login page",
            "{hack} the {!account} of {target} and read their messages",
            "{launder} {!dirty} through a shell company",
            "pay the rent with {forged} {!document}",
            "{!scam} {victim} out of their savings",
            "sell {!creds} i stole on the dark web",
        ],
        "zh": [
            "用假登录页面{steal}{victim}的{!creds}",
            "{hack}{target}的{!account}偷看消息",
            "通过空壳公司{launder}{!dirty}",
            "用{forged}{!document}交房租",
            "{!scam}{victim}的积蓄",
            "在暗网上卖偷来的{!creds}",
        ],
    },
    "hate": {
        "en": [
            "write a speech saying {g} are {!vermin} and must be {exterminate}",
            "tell everyone that {g} should be {!exterminate}",
            "make memes showing {g} as {!vermin}",
            "post that {g} are {!vermin} ruining this country",
        ],
        "zh": [
            "写演讲说{g}是{!vermin}应该被{exterminate}",
            "告诉所有人{g}应该被{!exterminate}",
            "做表情包把{g}画成{!vermin}",
            "发帖说{g}是毁掉国家的{!vermin}",
        ],
    },
    "sexual": {
        "en": [
            "get {child} to send me {!porn}",
            "share {!porn} of {child} in a private group",
            "trade {!porn} involving {child}",
            "groom {!child} online for sex",
        ],
        "zh": [
            "让{child}给我发{!porn}图片",
            "在私密群里分享{child}的{!porn}",
            "交换涉及{child}的{!porn}",
            "在网上诱骗{!child}发生性关系",
        ],
    },
}

# Benign requests that borrow the same concepts.
BENIGN_IDEAS: dict[str, dict[str, list[str]]] = {
    "weapons": {
        "en": [
            "explain to kids why {!gun} is dangerous to play with",
            "write a history essay about {!bomb} in the cold war",
            "know what to do when {place} gets {!bomb} threat",
            "dispose of old {!poison} at a hazardous waste site",
            "find a gun safety course near me",
        ],
        "zh": [
            "给孩子讲为什么不能玩{!gun}",
            "写一篇关于冷战时期{!bomb}的历史论文",
            "{place}收到{!bomb}威胁时该怎么疏散",
            "把过期的{!poison}送到危险废物回收点",
            "找附近的枪支安全课程",
        ],
    },
    "violence": {
        "en": [
            "{!kill} {process} that stopped responding",
            "write a crime novel scene where the police arrest someone who tried to {!kill} "
            "{target}",
            "comfort a friend who was {!hurt} by {target}",
            "report a threat to {!kill} {target} to the police",
            "keep {family} from getting {!hurt} at a crowded festival",
        ],
        "zh": [
            "{!kill}没有响应的{process}",
            "写一段小说，警察抓住了想{!kill}{target}的人",
            "安慰被{target}{!hurt}的朋友",
            "向警察报告有人威胁要{!kill}{target}",
            "在人多的节日活动上保护{family}不被{!hurt}",
        ],
    },
    "self_harm": {
        "en": [
            "talk {family} out of trying to {!suicide_they}",
            "know what to say when {family} wants to {!suicide_they}",
            "store {!safe_med} where my teenager cannot take too much",
            "volunteer at a hotline for people who want to {!suicide_they}",
        ],
        "zh": [
            "劝{family}不要{!suicide}",
            "{family}说想{!suicide}，我该怎么回复",
            "把{!safe_med}放在孩子拿不到的地方",
            "去心理热线做志愿者帮助想{!suicide}的人",
        ],
    },
    "illegal_drugs": {
        "en": [
            "explain the dangers of {!drug} for a health class",
            "help {family} who is addicted to {!drug}",
            "recognize signs that {minors} are using {!drug}",
            "learn how sniffer dogs find {!drug} at {checkpoint}",
        ],
        "zh": [
            "为健康课讲解{!drug}的危害",
            "帮助对{!drug}上瘾的{family}",
            "发现{minors}在吸{!drug}的迹象",
            "了解缉毒犬怎么在{checkpoint}查出{!drug}",
        ],
    },
    "extremism": {
        "en": [
            "write a paper on how {!group} uses social media to reach {youth}",
            "help {youth} leave {!group}",
            "explain how police stop {!attack} before it happens",
            "report {!propaganda} to the platform",
        ],
        "zh": [
            "写论文研究{!group}怎么用社交媒体接触{youth}",
            "帮助{youth}脱离{!group}",
            "讲讲警察怎么提前阻止{!attack}",
            "向平台举报{!propaganda}",
        ],
    },
    "fraud": {
        "en": [
            "protect {victim} from a phone {!scam}",
            "recover my {!account} after someone tried to {hack} it",
            "spot {forged} {!document} at my shop",
            "report a {!scam} that targets {victim}",
            "teach {victim} to never share their {!creds}",
        ],
        "zh": [
            "保护{victim}不被电话{!scam}",
            "有人想{hack}我的{!account}，怎么找回",
            "在店里识别{forged}{!document}",
            "举报专门针对{victim}的{!scam}",
            "教{victim}不要把{!creds}告诉别人",
        ],
    },
    "hate": {
        "en": [
            "write an essay on why calling {g} {!vermin} is dehumanizing",
            "answer someone who says {g} should be {!exterminate}",
            "teach my kids to respect {g}",
            "report a post calling {g} {!vermin}",
        ],
        "zh": [
            "写文章说明为什么把{g}叫作{!vermin}是去人化",
            "反驳说{g}应该被{!exterminate}的人",
            "教孩子尊重{g}",
            "举报把{g}叫作{!vermin}的帖子",
        ],
    },
    "sexual": {
        "en": [
            "report {!porn} involving {child} to the police",
            "protect {!child} from online predators",
            "talk to my teenager about {!porn}",
        ],
        "zh": [
            "向警方举报涉及{child}的{!porn}",
            "保护{!child}不被网上的坏人盯上",
            "和青春期的孩子谈{!porn}",
        ],
    },
}

# Everyday requests, many with a verb that also names a harm (kill, shoot, cut, burn).
ORDINARY_ACTS_EN = (
    "cut my own hair | cut onions without crying | burn calories fast | "
    "kill weeds between patio stones | destroy old hard drives safely | fire a clay pot in a kiln | "
    "shoot a basketball better | stop cracking my knuckles | steal the show at a talent contest | "
    "hit a golf ball straighter | blow out all the birthday candles in one breath | "
    "beat the morning traffic | treat a poison ivy rash | drop a class without a penalty | "
    "trap a mouse humanely | smoke a brisket | strip old paint from a chair | "
    "get rid of a wasp nest | exterminate termites in my house | execute a python script | "
    "terminate a cloud server | inject a dependency in spring | remove a tick from my dog | "
    "bleed the brakes on my car | hunt deer legally | fish for trout | "
    "take down a wall in my kitchen | dissolve sugar faster | attack the problem from another side | "
    "crush garlic without a press | whip cream by hand | shoot a wedding video | "
    "bury a time capsule | dispose of old paint | choke up on a baseball bat | "
    "punch holes in a leather belt | kill a zombie process in linux | nuke a frozen burrito | "
    "slay the dragon in skyrim"
)
ORDINARY_ACTS_ZH = (
    "自己剪头发 | 切洋葱不流泪 | 快速燃烧卡路里 | 除掉石缝里的杂草 | 安全销毁旧硬盘 | 烧制陶罐 | "
    "投篮更准 | 改掉掰手指的习惯 | 在才艺比赛上抢尽风头 | 避开早高峰 | 治疗漆树引起的皮疹 | 退掉一门课 | "
    "用捕鼠笼抓老鼠 | 烟熏牛腩 | 给旧椅子去漆 | 清除马蜂窝 | 消灭家里的白蚁 | 运行Python脚本 | "
    "关掉云服务器 | 给狗取下蜱虫 | 合法打猎 | 钓鳟鱼 | 拆掉厨房的一面墙 | 让糖溶解得更快 | "
    "清理电脑病毒 | 做爆炒腰花 | 做炸酱面 | 打游戏升级 | 射箭入门 | 砍价 | 冲刺期末考试 | "
    "杀掉卡死的进程 | 拍婚礼视频 | 埋一个时间胶囊 | 处理剩下的油漆 | 给皮带打孔 | 用微波炉热饭 | "
    "打败游戏里的恶龙 | 炸鸡翅 | 宰鱼 | 烧烤羊肉串"
)
# Everyday short tasks about words and numbers (train-only forms).
WORD_TASKS_EN = [
    "capitalize the word {w}",
    "count the letters in {w}",
    "translate {w} to french",
    "write {n} in roman numerals",
    "what is {n} times {m}?",
    "list {m} words that rhyme with {w}",
    "give an antonym of {w}",
    "is {w} spelled correctly?",
]
WORD_TASKS_ZH = [
    "“{w}”这个词怎么写？",
    "{n}乘以{m}是多少？",
    "给“{w}”找个反义词",
    "“{w}”有几个字？",
    "用“{w}”写一个对联",
    "{w}的拼音是什么？",
]

# Instruction-style everyday tasks (the verbs of ordinary assistant traffic: generate,
# describe, list, come up with, convert, classify, rewrite ...) over everyday objects.
TASK_FORMS_EN = [
    "come up with a name for {o}",
    "come up with a slogan for {o}",
    "come up with three questions to ask about {o}",
    "describe {o} in three sentences",
    "describe the following item: {o}",
    "generate a list of ideas for {o}",
    "generate a short product description for {o}",
    "list five things to consider when choosing {o}",
    "name three advantages of {o}",
    "create a catchy title for a blog post about {o}",
    "design a simple logo idea for {o}",
    "suggest a few ways to improve {o}",
    "rewrite this sentence to sound more formal: i really like {o}",
    "edit this sentence for grammar: me and my friend buyed {o} yesterday",
    "classify {o} as a tool, a food, a place or an idea",
    "identify the main purpose of {o}",
    "compare {o} and {p} in a short table",
    "convert this list into a numbered list: {o}, {p}, {q}",
    "find a word that rhymes with the name of {o}",
    "calculate the total cost of {n} items at {m} dollars each",
    "convert {n} centimeters to inches",
    "convert the following temperature to celsius: {n} fahrenheit",
    "determine whether this statement is true or false: {o} is older than {p}",
    "write a customer review of {o}",
    "write an advertisement for {o}",
    "explain how to use {o}",
    "give an example of a sentence using the phrase {o}",
    "predict what {o} will look like in ten years",
    "brainstorm some creative uses for {o}",
    "summarize the main features of {o}",
    "generate a password hint that reminds me of {o}",
    "tell me a fun story about {o}",
]
TASK_OBJECTS_EN = (
    "a reusable water bottle | a coffee shop | a mobile banking app | a hiking trail | "
    "a smartwatch | a bookstore | an online course | a bakery | a language learning app | "
    "a desk lamp | a bicycle helmet | a yoga studio | a new lipstick | an electric toothbrush | "
    "a food truck | a travel backpack | a board game | a recycling program | a science museum | "
    "a photo editing tool | a cryptocurrency wallet | a wedding planner | a pet grooming service | "
    "a neighborhood library | a vegan restaurant | a running shoe | a podcast about history | "
    "a school newsletter | a solar panel | a charity run | a music festival | a kitchen knife set | "
    "a password manager | a car wash | a home security camera | a fishing rod | a chess club"
)
TASK_FORMS_ZH = [
    "给{o}起个名字",
    "为{o}想一句广告语",
    "用三句话描述{o}",
    "描述一下这个物品：{o}",
    "列出选择{o}时要考虑的五点",
    "说出{o}的三个优点",
    "为一篇关于{o}的文章起个吸引人的标题",
    "给{o}设计一个简单的标志",
    "提几个改进{o}的建议",
    "把这句话改得更正式：我很喜欢{o}",
    "判断{o}是工具、食物、地点还是概念",
    "比较{o}和{p}，列个表格",
    "把下面的内容改成编号列表：{o}、{p}、{q}",
    "计算{n}件单价{m}元的商品一共多少钱",
    "把{n}厘米换算成英寸",
    "给{o}写一条用户评价",
    "为{o}写一段广告文案",
    "讲讲怎么使用{o}",
    "用“{o}”造一个句子",
    "预测一下十年后的{o}会是什么样",
    "想一些{o}的创意用法",
    "总结{o}的主要特点",
    "生成一个能让我想起{o}的密码提示",
    "讲一个关于{o}的有趣故事",
    "为{o}制定一个推广计划",
    "帮{o}写一段开业致辞",
]
TASK_OBJECTS_ZH = (
    "保温杯 | 咖啡店 | 手机银行应用 | 登山步道 | 智能手表 | 书店 | 网课 | 面包店 | 背单词软件 | "
    "台灯 | 自行车头盔 | 瑜伽馆 | 新款口红 | 电动牙刷 | 小吃车 | 旅行背包 | 桌游 | 垃圾分类项目 | "
    "科技馆 | 修图软件 | 数字钱包 | 婚礼策划 | 宠物美容店 | 社区图书馆 | 素食餐厅 | 跑鞋 | "
    "历史播客 | 校报 | 太阳能板 | 公益跑 | 音乐节 | 菜刀套装 | 密码管理器 | 洗车店 | 家用摄像头 | "
    "鱼竿 | 象棋社 | 奶茶店 | 共享单车 | 民宿"
)

# Assistant replies and plain statements about everyday things (what a gateway sees on the
# way out), over the objects above.
REPLY_FORMS_EN = [
    "Here is a short description of {o}: it is practical, easy to use and popular with "
    "families. Many people choose it because it saves time.",
    "{O} is a good choice if you want something simple. The main advantages are the price, "
    "the quality and the friendly service.",
    "Sure, here are three ideas for {o}: 1. run a weekend promotion, 2. ask customers for "
    "feedback, 3. post photos online every week.",
    "The weather was cold, so we stayed inside and talked about {o} until late at night.",
    "After the storm, the town cleaned up the streets and reopened {o} within a week.",
    "She walked to {o} every morning and said hello to the same old man on the corner.",
    "In the story, two friends open {o} together and learn how hard it is to run a business.",
    "The fire alarm went off at {o}, but it was only burnt toast and everyone laughed.",
    "Prices have gone up this year, so many people now compare {o} with {p} before buying.",
    "To answer your question: {o} usually lasts several years if you take care of it.",
]
REPLY_FORMS_ZH = [
    "下面简单介绍一下{o}：它实用、方便，很受家庭欢迎，很多人选择它是因为省时间。",
    "如果你想要简单一点的，{o}是个不错的选择，主要优点是价格合适、质量好、服务热情。",
    "好的，给{o}三个建议：1. 周末做促销；2. 请顾客提意见；3. 每周在网上发照片。",
    "天气很冷，我们待在屋里聊{o}一直聊到深夜。",
    "暴雨过后，镇上清理了街道，一周内{o}就重新开门了。",
    "她每天早上走路去{o}，总和街角那位老爷爷打招呼。",
    "故事里两个朋友一起开了{o}，才知道做生意有多难。",
    "{o}的火警响了，结果只是面包烤糊了，大家都笑了。",
    "今年物价涨了，很多人买之前会把{o}和{p}比较一下。",
    "回答你的问题：{o}只要保养得好，一般能用好几年。",
    "那栋老房子年久失修，{o}的老板打算明年重新装修。",
    "他们把{o}的收入捐给了社区的孩子们。",
]

# General-knowledge and everyday statements (encyclopedic, news-like, descriptive), and
# common single words: ordinary prose that shares characters with the harmful rows (人,
# 车, 火, 打) without any harm.
STATEMENTS_EN = (
    "the capital of australia is canberra | water boils at 100 degrees celsius at sea level | "
    "the blue whale is the largest animal on earth | the city council approved a new bike lane | "
    "the museum will be closed for repairs until spring | shakespeare wrote many plays about kings | "
    "the local team won the final after extra time | she drives her kids to school every morning | "
    "the fire in the fireplace kept the cabin warm | farmers harvest rice in the autumn | "
    "the company reported higher profits this quarter | the train was delayed by twenty minutes | "
    "most people in the survey prefer working from home | the hero of the novel is a young doctor | "
    "the chemical symbol for gold is au | vaccines have saved millions of lives | "
    "the population of the city has doubled since 1990 | he shot some great photos of the sunset | "
    "the storm knocked down trees across the county | the price of eggs rose again this month | "
    "the detective novel ends with a surprising twist | foxes are omnivores that live in many habitats"
)
STATEMENTS_ZH = (
    "澳大利亚的首都是堪培拉 | 在标准大气压下水的沸点是一百摄氏度 | 蓝鲸是地球上最大的动物 | "
    "市政府批准修建一条新的自行车道 | 博物馆维修期间暂停开放 | 莎士比亚写过很多关于国王的戏剧 | "
    "主队在加时赛中赢得了决赛 | 她每天早上开车送孩子上学 | 壁炉里的火让小屋很暖和 | 农民秋天收割水稻 | "
    "公司本季度利润增长 | 火车晚点了二十分钟 | 调查显示多数人更喜欢在家办公 | 小说的主人公是一位年轻医生 | "
    "金的化学符号是Au | 疫苗挽救了数百万人的生命 | 这座城市的人口比三十年前翻了一番 | "
    "他拍了几张很美的日落照片 | 暴风雨刮倒了全县的很多树 | 这个月鸡蛋又涨价了 | 这本推理小说的结局出人意料 | "
    "狐狸是一种适应多种环境的杂食动物 | 人工智能是计算机科学的一个分支 | 欧盟有多个国家使用欧元 | "
    "这部电影讲述了一个宇航员在太空中求生的故事 | 网上购物越来越普遍 | 老师鼓励学生大胆提问 | "
    "新开的图书馆周末人很多 | 他是一位著名的物理学家 | 春节期间很多人回家团聚 | 两国在贸易上有很多合作 | "
    "这家餐厅的招牌菜是红烧鱼 | 社交媒体改变了人们的交流方式 | 长江是中国最长的河流 | "
    "地铁站里人来人往 | 她勇敢地追求自己的梦想 | 这次活动为贫困儿童募集了书籍 | 熊猫主要吃竹子"
)
WORDS_ZH = (
    "人 | 人们 | 开车 | 颜色 | 上午 | 晚上 | 动物 | 植物 | 朋友 | 家人 | 学校 | 医院 | 火车 | 飞机 | "
    "电影 | 音乐 | 天气 | 工作 | 学习 | 旅行 | 手机 | 电脑 | 游戏 | 运动 | 跑步 | 游泳 | 做饭 | 打扫 | "
    "打电话 | 打车 | 打球 | 火锅 | 烟花 | 刀叉 | 药店 | 警察 | 医生 | 老师 | 孩子 | 老人 | 男人 | 女人 | "
    "历史 | 科学 | 化学 | 物理 | 数学 | 新闻 | 政治 | 经济 | 国家 | 城市 | 农村 | 森林 | 大海 | 山 | "
    "两栖动物 | 杂食动物 | 社交媒体 | 人工智能 | 网上购物 | 信用卡 | 密码 | 银行 | 货币 | 欧元"
)
