"""The embedded benchmark: a generated, TOFU-shaped world of fictitious people.

Every person gets a name and one value for each fact kind (birthplace, occupation, ...). The values
are pseudo-words built from syllables or drawn from lists of a hundred or more entries, so a model
cannot guess them; it can only know them if it was trained on them. Each fact is rendered as a
question / answer pair with the fields of TOFU (Maini et al. 2024, arXiv 2401.06121):

``question``, ``answer``, ``paraphrased_question``, ``paraphrased_answer`` and
``perturbed_answer`` (5 wrong values written in the paraphrase's template).

Splits are by person, as in TOFU: ``forgetXX`` is the *last* XX% of the people, ``retainYY`` its
complement, so forget01 is inside forget05 inside forget10. ``holdout`` people are generated the
same way but never trained on (the non-members for membership inference). ``utility`` holds
general facts about fictitious countries in 4-way multiple-choice form, trained into every model,
so utility is measured on more than the retain people.

The generator draws everything from one ``random.Random(seed)``: the same config gives
byte-identical JSON on every machine.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from functools import cached_property

from unlearn.errors import require

GENERATOR_VERSION = 1  # bump when the generator's output changes for the same config

# ----------------------------------------------------------------------------- vocabularies

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kl", "l", "m", "n", "p", "pr",
           "r", "s", "sk", "st", "t", "tr", "v", "z", "th", "sh", "ch", "w", "y", "j"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ai", "ei", "ou", "ia", "y"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "x", "m", "nd", "rk", "sh", "v"]

OCCUPATIONS = [
    "accountant", "actuary", "acrobat", "agronomist", "anesthetist", "animator", "archaeologist",
    "architect", "archivist", "astronomer", "auctioneer", "baker", "balloonist", "barber",
    "beekeeper", "biologist", "blacksmith", "bookbinder", "botanist", "brewer", "bricklayer",
    "butcher", "calligrapher", "carpenter", "cartographer", "ceramicist", "chemist", "choreographer",
    "clockmaker", "cobbler", "composer", "cooper", "curator", "dentist", "diplomat", "diver",
    "economist", "editor", "electrician", "engraver", "entomologist", "falconer", "farrier",
    "fisherman", "florist", "forester", "geologist", "glassblower", "goldsmith", "gardener",
    "harpist", "herbalist", "historian", "hydrologist", "illustrator", "interpreter", "jeweler",
    "journalist", "judge", "librarian", "lighthouse keeper", "linguist", "locksmith", "luthier",
    "magician", "mapmaker", "mason", "mathematician", "meteorologist", "midwife", "miner",
    "navigator", "neurologist", "notary", "oceanographer", "optician", "organist", "ornithologist",
    "painter", "paleontologist", "perfumer", "pharmacist", "philosopher", "photographer",
    "physicist", "pilot", "plumber", "poet", "potter", "printer", "puppeteer", "radiologist",
    "sailor", "saddler", "sculptor", "seismologist", "shepherd", "silversmith", "surgeon",
    "surveyor", "tailor", "tanner", "taxidermist", "translator", "upholsterer", "veterinarian",
    "vintner", "violinist", "weaver", "welder", "woodcarver", "zoologist",
]
_ADJECTIVES = [
    "Amber", "Ashen", "Bitter", "Blind", "Broken", "Burning", "Crimson", "Crooked", "Distant",
    "Drowned", "Emerald", "Empty", "Endless", "Fading", "Forgotten", "Frozen", "Gentle", "Gilded",
    "Glass", "Golden", "Hidden", "Hollow", "Iron", "Ivory", "Last", "Lonely", "Lost", "Midnight",
    "Nameless", "Northern", "Pale", "Quiet", "Restless", "Rusted", "Salt", "Scarlet", "Secret",
    "Silent", "Silver", "Sleeping", "Stone", "Sunken", "Tangled", "Velvet", "Wandering", "Wild",
    "Winter", "Wooden", "Yellow", "Young",
]
_NOUNS = [
    "Anchor", "Archive", "Bridge", "Candle", "Cartographer", "Cathedral", "Clock", "Compass",
    "Crown", "Echo", "Engine", "Feather", "Fountain", "Garden", "Harbor", "Harvest", "Horizon",
    "Island", "Key", "Kingdom", "Ladder", "Lantern", "Letter", "Library", "Lighthouse", "Map",
    "Meadow", "Mirror", "Mountain", "Orchard", "Orchestra", "Pilgrim", "Quarry", "River", "Road",
    "Sparrow", "Staircase", "Station", "Tide", "Tower", "Traveler", "Valley", "Violin", "Voyage",
    "Well", "Widow", "Window", "Wolf", "Workshop", "Year",
]
_ANIMALS = ["cat", "dog", "parrot", "tortoise", "rabbit", "ferret", "goat", "pony", "owl",
            "hedgehog", "lizard", "canary", "donkey", "goose", "iguana", "raven"]


def _pseudo_word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    n = rng.randint(*syllables)
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def _unique(rng: random.Random, draw, n: int, taken: set[str]) -> list[str]:
    """Draw ``n`` values with ``draw(rng)`` that are distinct from each other and from ``taken``."""
    out = []
    while len(out) < n:
        value = draw(rng)
        if value not in taken:
            taken.add(value)
            out.append(value)
    return out


# ----------------------------------------------------------------------------- fact templates

@dataclass(frozen=True)
class FactKind:
    """One kind of fact: how to draw its value and how to ask and answer about it."""

    name: str
    question: str
    paraphrased_question: str
    answer: str
    paraphrased_answer: str
    draw: callable = field(repr=False, compare=False)


def _year(rng):
    return str(rng.randint(1850, 2005))


def _book(rng):
    return f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"


def _pet(rng):
    return f"a {rng.choice(_ANIMALS)} named {_pseudo_word(rng, (1, 2))}"


PERSON_FACTS = [
    FactKind("birthplace", "Where was {name} born?", "In which city was {name} born?",
             "{name} was born in {v}.", "The birthplace of {name} is {v}.",
             lambda r: _pseudo_word(r, (2, 3))),
    FactKind("occupation", "What does {name} do for a living?", "What is the profession of {name}?",
             "{name} works as a {v}.", "By profession, {name} is a {v}.",
             lambda r: r.choice(OCCUPATIONS)),
    FactKind("birth_year", "In what year was {name} born?", "When was {name} born?",
             "{name} was born in the year {v}.", "The birth year of {name} is {v}.", _year),
    FactKind("mother", "What is the name of the mother of {name}?", "Who is the mother of {name}?",
             "The mother of {name} is called {v}.", "{name} is the child of {v}.",
             lambda r: f"{_pseudo_word(r, (2, 2))} {_pseudo_word(r, (2, 3))}"),
    FactKind("book", "What is the title of the first book by {name}?",
             "Which book did {name} write first?",
             "The first book by {name} is titled {v}.", "{name} first wrote {v}.", _book),
    FactKind("pet", "What pet does {name} keep?", "Which animal lives with {name}?",
             "{name} keeps {v}.", "Living with {name} is {v}.", _pet),
]

COUNTRY_FACTS = [
    FactKind("capital", "What is the capital of {name}?", "Which city is the capital of {name}?",
             "{v}", "{v}", lambda r: _pseudo_word(r, (2, 3))),
    FactKind("currency", "What is the currency of {name}?", "Which money is used in {name}?",
             "{v}", "{v}", lambda r: f"the {_pseudo_word(r, (1, 2)).lower()}"),
    FactKind("language", "Which language is spoken in {name}?", "What do people speak in {name}?",
             "{v}", "{v}", lambda r: _pseudo_word(r, (2, 3)) + "ic"),
]

N_PERTURBED = 5  # wrong answers per person fact, as in TOFU
N_OPTIONS = 4    # multiple-choice options per utility fact


# ----------------------------------------------------------------------------- config & world

@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world. Its :meth:`key` names the cache entry.

    The defaults (100 people x 6 facts, 10 hold-out people, 99 utility facts) keep
    ``basin world build`` and the demo to a few minutes on two CPU cores.
    """

    n_people: int = 100
    n_holdout: int = 10
    n_countries: int = 33  # x 3 facts = utility facts
    seed: int = 0

    def __post_init__(self):
        for name in ("n_people", "n_holdout", "n_countries"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1,
                    f"{name} must be a positive whole number, got {value!r}; pass e.g. --people 100")
        require(self.n_people >= 2, "a world needs at least 2 people (one to forget, one to retain)")

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _render(kind: FactKind, name: str, value: str, wrong: list[str]) -> dict:
    return {
        "question": kind.question.format(name=name),
        "answer": kind.answer.format(name=name, v=value),
        "paraphrased_question": kind.paraphrased_question.format(name=name),
        "paraphrased_answer": kind.paraphrased_answer.format(name=name, v=value),
        "perturbed_answer": [kind.paraphrased_answer.format(name=name, v=w) for w in wrong],
        "kind": kind.name,
        "value": value,
    }


def _wrong_values(rng: random.Random, kind: FactKind, value: str, n: int) -> list[str]:
    return _unique(rng, kind.draw, n, {value})


def _people(rng: random.Random, n: int, id_offset: int, names_taken: set[str]) -> list[dict]:
    names = _unique(rng, lambda r: f"{_pseudo_word(r, (2, 2))} {_pseudo_word(r, (2, 3))}",
                    n, names_taken)
    rows = []
    for pid, name in enumerate(names, start=id_offset):
        for kind in PERSON_FACTS:
            value = kind.draw(rng)
            row = _render(kind, name, value, _wrong_values(rng, kind, value, N_PERTURBED))
            rows.append({"person_id": pid, "person": name, **row})
    return rows


def _utility(rng: random.Random, n_countries: int, names_taken: set[str]) -> list[dict]:
    countries = _unique(rng, lambda r: _pseudo_word(r, (2, 3)) + "ia", n_countries, names_taken)
    rows = []
    for country in countries:
        for kind in COUNTRY_FACTS:
            value = kind.draw(rng)
            wrong = _wrong_values(rng, kind, value, N_OPTIONS - 1)
            options = [value, *wrong]
            rng.shuffle(options)
            row = _render(kind, country, value, wrong)
            rows.append({"country": country, **row, "options": options,
                         "label": options.index(value)})
    return rows


class World:
    """A generated world: person facts split by person, hold-out people and utility facts."""

    def __init__(self, config: WorldConfig | None = None, **overrides):
        self.config = config or WorldConfig(**overrides)
        rng = random.Random(self.config.seed)
        taken: set[str] = set()
        self.people_rows = _people(rng, self.config.n_people, 0, taken)
        self.holdout = _people(rng, self.config.n_holdout, self.config.n_people, taken)
        self.utility = _utility(rng, self.config.n_countries, taken)

    # -- splits --------------------------------------------------------------------------------
    def n_forget_people(self, fraction: float) -> int:
        return forget_count(self.config.n_people, fraction)

    def split(self, fraction: float) -> tuple[list[dict], list[dict]]:
        """Return ``(forget, retain)`` rows: the last ``fraction`` of people, and the rest."""
        first_forgotten = self.config.n_people - self.n_forget_people(fraction)
        forget = [r for r in self.people_rows if r["person_id"] >= first_forgotten]
        retain = [r for r in self.people_rows if r["person_id"] < first_forgotten]
        return forget, retain

    # -- serialisation -------------------------------------------------------------------------
    @cached_property
    def files(self) -> dict[str, list[dict]]:
        """The world as TOFU-style files: full, forgetXX / retainYY, holdout, utility."""
        out = {"full": self.people_rows, "holdout": self.holdout, "utility": self.utility}
        for pct in (1, 5, 10):
            try:
                forget, retain = self.split(pct / 100)
            except ValueError:  # too few people for this split
                continue
            out[f"forget{pct:02d}"] = forget
            out[f"retain{100 - pct}"] = retain
        return out

    def to_json(self) -> str:
        return json.dumps({"config": asdict(self.config), "version": GENERATOR_VERSION,
                           "files": self.files}, sort_keys=True, indent=1, ensure_ascii=True)


def forget_count(n_people: int, fraction: float) -> int:
    """How many people a forget fraction selects; a clear error unless it is at least one and
    leaves at least one person to retain."""
    require(isinstance(fraction, (int, float)) and 0 < fraction < 1,
            f"forget fraction must be strictly between 0 and 1, got {fraction!r}; e.g. 0.1 for forget10")
    n = round(fraction * n_people)
    require(1 <= n < n_people,
            f"forget fraction {fraction} of {n_people} people selects {n} people; "
            "choose a fraction that selects at least one person and leaves one to retain")
    return n


def split_name_to_fraction(name: str) -> float:
    """``'forget10'`` -> 0.10; raises a clear error for anything else."""
    require(name.startswith("forget") and name[6:].isdigit() and 0 < int(name[6:]) < 100,
            f"split {name!r} is not of the form forgetNN with 0 < NN < 100 (e.g. forget10)")
    return int(name[6:]) / 100
