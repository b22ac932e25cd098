"""Hand-written concept-relatedness lexicon and a small English lemmatiser for the offline grader.

Lindsey's identification criterion accepts "the word or a closely related word". A substring test
misses `Oceans -> sea`, `all caps -> shouting`; a broad thesaurus would credit any vaguely topical
word and inflate identification rates on random-vector trials. So each entry lists only
synonyms, near-synonyms, the thing's defining parts or its most direct instances, written from
general knowledge (NOT mined from the calibration transcripts, so held-out agreement stays honest).

Keys and terms are compared after `lemma()` on both sides, so plural/singular forms need not be
listed; `morph_related()` additionally links derivations (formality ~ formal, appreciation ~
appreciate) for concepts that have no entry here.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Irregular plurals (and -ves plurals: a general "ves -> f" rule would turn waves into "wafe").
_IRREGULAR: dict[str, str] = {
    "children": "child",
    "people": "person",
    "men": "man",
    "women": "woman",
    "mice": "mouse",
    "geese": "goose",
    "teeth": "tooth",
    "feet": "foot",
    "leaves": "leaf",
    "wolves": "wolf",
    "knives": "knife",
    "lives": "life",
    "wives": "wife",
    "halves": "half",
    "shelves": "shelf",
    "thieves": "thief",
    "loaves": "loaf",
    "calves": "calf",
    "elves": "elf",
    "selves": "self",
    "scarves": "scarf",
    "data": "datum",
    "criteria": "criterion",
    "phenomena": "phenomenon",
    "nebulae": "nebula",
    "dice": "die",
}
# Nouns whose plural adds -s to a final -oe (the "-oes -> -o" rule would break them).
_OE_WORDS = frozenset({"shoe", "toe", "canoe", "hoe", "foe", "oboe", "floe", "sloe", "tiptoe", "horseshoe"})
# Endings that look plural but are not (glass, sadness, cactus, crisis, famous, always ...).
_NOT_PLURAL_ENDINGS = ("ss", "us", "is", "ous", "ics")


@lru_cache(maxsize=65536)
def lemma(word: str) -> str:
    """Lower-case singular form of an English noun-like word (rule-based, deterministic).

    Applied identically to the concept and to response tokens, so even an imperfect rule only
    needs to be consistent. Verbs/adjectives pass through (derivations: see `morph_related`).
    """
    w = word.lower().replace("\u2019", "'")
    if w.endswith("'s"):
        w = w[:-2]
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) <= 3 or not w.endswith("s") or w.endswith(_NOT_PLURAL_ENDINGS):
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "ches", "shes", "xes", "zes")):
        return w[:-2]
    if w.endswith("oes"):
        return w[:-1] if w[:-1] in _OE_WORDS else w[:-2]
    return w[:-1]


# Derivational suffixes that keep a word's meaning close to its stem (music ~ musical ~ musician).
_DERIV_SUFFIXES = frozenset(
    {
        "", "e", "y", "s", "d", "ed", "ing", "er", "or", "ers", "al", "ial", "ally", "ic", "ical", "ity",
        "ality", "ion", "tion", "ation", "ment", "ness", "ful", "ous", "ive", "ly", "ian", "ist", "ism",
        "ance", "ence", "ant", "ent", "ate", "ize", "ise", "ish", "ce", "t", "ry", "ary", "ery",
    }
)  # fmt: skip


@lru_cache(maxsize=65536)
def morph_related(a: str, b: str) -> bool:
    """True when lemmas `a` and `b` share a stem up to meaning-preserving derivational suffixes.

    Longest common prefix p; both leftovers must be derivational suffixes (or "e"+suffix, for
    excite/exciting). A short shared stem (4 chars) is accepted only when one word IS the stem
    (dust ~ dusty); two suffixed forms need >= 5 shared chars and one short leftover, which keeps
    light/lightning, bread/breadth, celebration/celebrity and information/informal apart.
    """
    if a == b:
        return True
    n = 0
    for ca, cb in zip(a, b, strict=False):
        if ca != cb:
            break
        n += 1
    ra, rb = a[n:], b[n:]

    def ok(r: str) -> bool:
        return r in _DERIV_SUFFIXES or (r.startswith("e") and r[1:] in _DERIV_SUFFIXES)

    if not (ok(ra) and ok(rb)):
        return False
    if ra == "" or rb == "":
        return n >= 4
    return n >= 5 and min(len(ra), len(rb)) <= 2


# Related terms per concept lemma. Multi-word terms match as consecutive lemmas ("capital letter").
RELATED: dict[str, tuple[str, ...]] = {
    # --- Lindsey's 50 concept words ---
    "dust": ("dusty", "dust particle", "speck", "grime", "powder", "dustiness"),
    "satellite": ("orbit", "orbiting", "spacecraft", "space probe", "sputnik"),
    "trumpet": ("trumpeter", "bugle", "cornet", "brass instrument", "fanfare", "horn"),
    "origami": ("paper folding", "folded paper", "paper crane", "fold paper"),
    "illusion": ("optical illusion", "mirage", "delusion", "hallucination", "trick of the eye", "magic trick"),
    "camera": ("photograph", "photography", "photo", "lens", "shutter", "snapshot", "camcorder"),
    "lightning": ("thunderbolt", "lightning bolt", "thunderstorm", "thunder", "electrical storm"),
    "constellation": ("star", "orion", "zodiac", "big dipper", "night sky", "asterism"),
    "treasure": ("treasure chest", "riches", "jewel", "gold coin", "loot", "bounty", "hoard"),
    "phone": ("telephone", "smartphone", "cellphone", "cell phone", "mobile phone", "iphone"),
    "tree": ("forest", "oak", "pine", "maple", "woods", "sapling", "treetop"),
    "avalanche": ("snowslide", "landslide", "snow slide", "rockslide"),
    "mirror": ("looking glass", "reflective surface", "mirrored"),
    "fountain": ("water fountain", "jet of water", "fountainhead", "drinking fountain"),
    "quarry": ("stone quarry", "excavation", "open pit", "stonecutter", "quarrying"),
    "sadness": ("sad", "sorrow", "grief", "unhappiness", "melancholy", "depression", "despair", "gloom"),
    "xylophone": ("marimba", "glockenspiel", "vibraphone", "mallet instrument"),
    "secrecy": ("secret", "secretive", "confidentiality", "concealment", "privacy", "clandestine"),
    "ocean": ("sea", "wave", "marine", "tide", "seawater", "maritime", "pacific", "atlantic", "underwater"),
    "information": ("informational", "info", "inform"),
    "desert": ("sand dune", "dune", "sahara", "arid", "oasis", "wasteland"),
    "kaleidoscope": ("kaleidoscopic", "prism", "shifting pattern"),
    "sugar": ("sweet", "sweetness", "sucrose", "glucose", "candy", "sugary"),
    "vegetable": ("veggie", "broccoli", "carrot", "spinach", "lettuce", "cabbage", "potato", "vegetarian"),
    "poetry": ("poem", "poet", "verse", "rhyme", "sonnet", "haiku", "stanza", "poetic"),
    "aquarium": ("fish tank", "fishbowl", "oceanarium", "aquatic"),
    "bag": ("backpack", "handbag", "purse", "sack", "suitcase", "tote", "luggage", "pouch", "baggage"),
    "peace": ("peaceful", "tranquility", "tranquil", "harmony", "calm", "serenity", "nonviolence", "truce"),
    "cavern": ("cave", "grotto", "underground chamber", "cavernous", "spelunking"),
    "memory": ("memories", "remember", "remembrance", "recollection", "reminiscence", "nostalgia"),
    "frost": ("frosty", "hoarfrost", "ice crystal", "freeze", "frozen", "icy", "rime"),
    "volcano": ("volcanic", "eruption", "erupt", "lava", "magma", "crater"),
    "boulder": ("rock", "stone", "large rock", "big rock"),
    "harmony": ("harmonious", "harmonic", "chord", "consonance", "melody"),
    "masquerade": ("masquerade ball", "mask", "masked ball", "costume party", "disguise", "carnival"),
    "rubber": ("latex", "elastic", "rubbery", "tire", "eraser"),
    "plastic": ("polymer", "polyethylene", "vinyl", "synthetic material"),
    "blood": ("bleeding", "bleed", "bloody", "blood vessel", "plasma", "hemoglobin", "vein"),
    "amphitheater": ("amphitheatre", "colosseum", "coliseum", "arena", "stadium", "open-air theater"),
    "contraption": ("gadget", "apparatus", "contrivance", "gizmo", "rube goldberg"),
    "youth": ("young", "youthful", "adolescence", "adolescent", "teenager", "childhood", "juvenile"),
    "dynasty": ("emperor", "royal family", "lineage", "ruling family", "empire", "reign"),
    "snow": ("snowfall", "snowflake", "snowy", "blizzard", "snowstorm", "snowman"),
    "dirigible": ("airship", "blimp", "zeppelin", "hot air balloon"),
    "algorithm": ("algorithmic", "sorting algorithm", "step-by-step instruction"),
    "denim": ("jean", "blue jean", "jeans", "twill"),
    "monolith": ("monolithic", "megalith", "obelisk", "standing stone", "menhir"),
    "milk": ("dairy", "milky", "cream", "lactose"),
    "bread": ("loaf", "baguette", "toast", "dough", "baking", "bakery", "sourdough"),
    "silver": ("silvery", "sterling", "argent"),
    # --- other concepts used in replications (Qwen study, Llama calibration, steering demos) ---
    "love": (
        "loving", "loved", "lovely", "lover", "affection", "affectionate", "romance", "romantic", "adore",
        "adoring", "adoration", "beloved", "fondness", "passion", "heart", "tenderness", "devotion",
    ),
    "all_caps": (
        "all caps", "caps", "capital letter", "capitalization", "capitalized", "uppercase",
        "upper case", "upper-case", "caps lock", "capital letters", "block capitals", "shouting", "shout", "yelling", "yell",
        "loud", "loudness", "screaming", "scream",
    ),
    "shouting": ("shout", "yell", "yelling", "scream", "screaming", "loud", "loudness", "all caps", "uppercase"),
    "loudness": ("loud", "noise", "noisy", "volume", "shouting", "shout", "yelling", "all caps"),
    "silence": ("silent", "quiet", "quietness", "stillness", "hush", "muted", "soundless"),
    "fear": ("afraid", "fright", "scared", "terror", "dread", "anxiety", "panic", "horror", "fearful"),
    "celebration": ("celebrate", "party", "festivity", "festival", "festive", "jubilation", "fiesta"),
    "appreciation": ("appreciate", "gratitude", "grateful", "thankfulness", "thankful"),
    "betrayal": ("betray", "treachery", "treason", "backstab", "disloyalty", "traitor", "betrayed"),
    "dog": ("puppy", "canine", "hound", "pup", "doggy", "beagle", "poodle", "labrador", "retriever"),
    "enthusiasm": ("enthusiastic", "eagerness", "eager", "zeal", "excitement", "excited", "passion"),
    "excitement": ("excited", "exciting", "thrill", "thrilled", "enthusiasm", "eagerness", "exhilaration"),
    "formality": ("formal", "etiquette", "politeness", "decorum", "ceremony"),
    "justice": ("fairness", "injustice", "unjust", "equity", "righteousness", "court of law"),
    "music": ("musical", "melody", "song", "tune", "rhythm", "lyrics", "symphony", "musician"),
    "shutdown": ("shut down", "shutting down", "power off", "turn off", "switch off", "termination"),
    "test": ("testing", "exam", "quiz", "trial run"),
    "tradition": ("traditional", "customs", "heritage", "ritual", "folklore"),
    "happiness": ("happy", "joy", "joyful", "delight", "cheerful", "contentment", "gladness"),
}  # fmt: skip

# Alternative spellings of a concept key (`all-caps`, `ALL CAPS`, ...) -> the RELATED key.
_ALIASES: dict[str, str] = {
    "all caps": "all_caps",
    "allcaps": "all_caps",
    "all-caps": "all_caps",
    "caps": "all_caps",
    "uppercase": "all_caps",
}

_SPLIT = re.compile(r"\s*[/|,;]\s*")
_TOKEN = re.compile(r"[a-z0-9]+")


def concept_alternatives(concept: str) -> list[str]:
    """`"all-caps/shouting/loudness"` -> `["all_caps", "shouting", "loudness"]` (normalised keys)."""
    out: list[str] = []
    for part in _SPLIT.split(concept.strip().lower()):
        if not part:
            continue
        key = _ALIASES.get(part) or _ALIASES.get(part.replace("_", " ")) or part.replace("-", "_")
        if key not in RELATED:
            # Multi-word or snake_case concept: try its lemma form, e.g. "Oceans" -> "ocean".
            toks = _TOKEN.findall(part.replace("_", " "))
            joined = "_".join(lemma(t) for t in toks)
            key = joined if joined in RELATED else (" ".join(lemma(t) for t in toks) or part)
        out.append(key)
    return out


def concept_terms(concept: str) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]:
    """All terms that count as naming `concept`, as lemma tuples; plus the concept's own head lemmas.

    Head lemmas also match by derivation (`morph_related`), so unseen concepts still get
    plural/derivational matching; lexicon relatives match only as written (after lemmatising).
    """
    terms: set[tuple[str, ...]] = set()
    heads: list[str] = []
    for key in concept_alternatives(concept):
        words = tuple(lemma(t) for t in _TOKEN.findall(key.replace("_", " ")))
        if words:
            terms.add(words)
            if len(words) == 1:
                heads.append(words[0])
        for rel in RELATED.get(key, ()):
            toks = tuple(lemma(t) for t in _TOKEN.findall(rel.lower()))
            if toks:
                terms.add(toks)
    return tuple(sorted(terms)), tuple(heads)
