"""A deterministic encyclopedia of fictional people, places, organisations and works.

Every name is invented, so a language model cannot answer from memory and a score
measures retrieval plus reading. All randomness comes from ``random.Random`` seeded with
strings (which ``random`` hashes with SHA-512, unlike ``hash()``), so a seed gives the same
corpus in every process. The world, the main passages, the distractor passages and the
questions draw from separate streams: changing ``n_questions`` or
``extra_passages_per_entity`` leaves everything else as it was, and main passage ids never
depend on the number of distractors.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from random import Random
from typing import Callable, Iterator

from semoe.config import SyntheticConfig
from semoe.data.schema import Example, Passage

QUESTION_TYPES = ("single-hop", "bridge", "comparison")
MIN_WORDS, MAX_WORDS = 80, 130
_MAX_FILLER_DRAWS = 30  # a passage needs at most ~8 fillers; the bound only guards against looping

# --------------------------------------------------------------------------- names

# Names are a head syllable, up to two linking syllables and a tail that gives the kind its
# flavour (Marvale, Quellia, Orsolya Vantrecht): pronounceable, yet not real words.
_HEADS = tuple(
    "al ar bel bran cal cor dal dor el er fal fen gal gar hal hel il is jan kal kel kes lor mal mar mer "
    "mir nal nev or os pel quel ral ren ros sal sel tal tam tel tor ul val van vel ven wen yar zel zor".split()
)
_LINKS = tuple(
    "a e i o u ra re ri ro la le li lo na ne ni no sa se si so ta te ti to va ve vi vo da de di do "
    "ma me mi mo ka ke ki".split()
)
_TAILS = {
    "word": tuple(
        "ac an ar ast ek eth ik ir is ith ok or os oth und yn "
        "dor mar ven thal rik vos tis nar dal mir gan bek zan dris lor sk rund vek".split()
    ),
    "given": tuple("a ia ya ine o en el is lya na ra sia rin mir vin da".split()),
    "surname": tuple("trecht ov ard ell ind oste ak ez ic ski aan ey dt vic rath mayr voss".split()),
    "place": tuple("vale holm vik mar ora eth und stad mont ica dor rin ssa".split()),
    "country": tuple("ia ora and esh avia enia stria land".split()),
    "river": tuple("a e is en ava sk ra rin".split()),
}
# Every word this scheme can build that is a whole-word token of an English LM vocabulary
# (SmolLM2's, checked exhaustively); other collisions with real names are possible but rare.
_REAL_WORDS = frozenset(
    "aramaic armenia armenian calvin cornea corona corridor eleven helena island kelvin lorraine malaria "
    "marian marine martian meridian nevada pelvic saline salvador vandal vendor venetian zoroast".split()
)
_AWKWARD = re.compile(r"(.)\1\1|([aeiou])\2|[aeiouy]{3}|(?!ia|io|ea|ya|ai|ei|ey|oa)[aeiouy]{2}|[^aeiouy]{4}")


class _Namer:
    """Invented words, unique across the whole encyclopedia so that no two names collide."""

    def __init__(self, rng: Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, flavour: str = "word") -> str:
        rng = self.rng
        while True:
            links = rng.choices((0, 1, 2), (45, 45, 10))[0]
            stem = rng.choice(_HEADS) + "".join(rng.choice(_LINKS) for _ in range(links))
            low = stem + rng.choice(_TAILS[flavour])
            if 6 <= len(low) <= 11 and low not in self.used and low not in _REAL_WORDS and not _AWKWARD.search(low):
                self.used.add(low)
                return low.capitalize()


# --------------------------------------------------------------------------- world


@dataclass(eq=False)
class Place:
    name: str
    kind: str  # village, town or city, from the population
    country: str
    river: str
    founded: int
    population: int
    passage_id: str = ""


@dataclass(eq=False)
class Person:
    name: str
    surname: str
    birth_year: int
    birthplace: Place
    sector: str  # the organisation category this person works in
    occupation: str
    employer: "Organisation | None" = None
    spouse: "Person | None" = None
    passage_id: str = ""


@dataclass(eq=False)
class Organisation:
    name: str
    category: str
    descriptor: str  # industry for companies, genre for bands, flavour otherwise
    founder: Person
    headquarters: Place
    founded: int
    passage_id: str = ""


@dataclass(eq=False)
class Work:
    name: str
    form: str  # novel, film or album
    genre: str
    creator: Person
    year: int
    publisher: Organisation
    passage_id: str = ""


Entity = Place | Person | Organisation | Work


@dataclass(frozen=True)
class _Category:
    noun: str
    names: tuple[str, ...]
    descriptors: tuple[str, ...]
    occupations: tuple[str, ...] = ()  # of people who work in this sector; empty: not an employer
    join: str = ""  # "<person> {join} <organisation>"
    founded: str = "founded"
    earliest: int = 1815  # first founding year, so no film studio predates film
    born_from: int = 1790  # people of this sector are born from this year (to 1975)
    founder_sector: str = ""  # defaults to the category itself


_CATEGORIES = {
    "company": _Category(
        "company",
        ("{s} Holdings", "{s} Industries", "{s} & Co.", "{s} Works"),
        (
            "shipbuilding",
            "textile",
            "mining",
            "brewing",
            "printing",
            "timber",
            "pharmaceutical",
            "glassmaking",
            "insurance",
            "chemical",
        ),
        ("engineer", "chemist", "accountant", "architect", "economist", "surveyor"),
        "worked for",
    ),
    "university": _Category(
        "university",
        ("{s} University", "{s} Institute of Technology", "{s} College"),
        ("public", "private", "research"),
        ("historian", "physicist", "mathematician", "botanist", "linguist", "philosopher"),
        "taught at",
    ),
    "publisher": _Category(
        "publishing house",
        ("{s} Press", "{s} Books", "{s} House"),
        ("independent", "literary", "academic"),
        ("novelist", "poet", "essayist", "playwright"),
        "wrote for",
    ),
    "studio": _Category(
        "film studio",
        ("{s} Pictures", "{s} Studios", "{s} Films"),
        ("independent", "major", "family-run"),
        ("film director", "screenwriter", "cinematographer", "film producer"),
        "worked for",
        earliest=1908,
        born_from=1860,
    ),
    "label": _Category(
        "record label",
        ("{s} Records", "{s} Sound", "{s} Music"),
        ("independent", "specialist", "major"),
        ("composer", "singer", "pianist", "guitarist", "violinist"),
        "recorded for",
        earliest=1900,
        born_from=1860,
    ),
    "band": _Category(
        "band",
        ("The {s}", "{s}", "{s} Collective", "{s} Quartet"),
        ("folk", "jazz", "bluegrass", "brass", "blues", "chamber pop"),
        founded="formed",
        earliest=1920,
        founder_sector="label",
    ),
}
_SECTORS = tuple(c for c, spec in _CATEGORIES.items() if spec.occupations)


@dataclass(frozen=True)
class _Form:
    publisher_category: str
    creator_sector: str
    earliest: int
    titles: tuple[str, ...]
    genres: tuple[str, ...]
    made_by: str  # "<work> was {made_by} <creator>"
    make: str  # "Who {make} the <form> <work>?"
    creator_noun: str
    released: str  # "first {released} in <year>"
    issued: str  # "<work> was {issued} by <publisher>"


_FORMS = {
    "novel": _Form(
        "publisher",
        "publisher",
        1815,
        ("{s}", "The {s} Letters", "A Winter in {s}", "The House at {s}"),
        ("historical", "science fiction", "mystery", "romance", "gothic", "satirical", "adventure"),
        "written by",
        "wrote",
        "author",
        "published",
        "published",
    ),
    "film": _Form(
        "studio",
        "studio",
        1910,
        ("{s}", "Return to {s}", "The {s} Affair", "Nights in {s}"),
        ("drama", "comedy", "thriller", "western", "documentary", "war", "horror"),
        "directed by",
        "directed",
        "director",
        "released",
        "produced",
    ),
    "album": _Form(
        "label",
        "label",
        1930,
        ("{s}", "{s} Sessions", "Songs for {s}", "Live at {s}"),
        ("jazz", "folk", "blues", "gospel", "chamber pop", "swing"),
        "recorded by",
        "recorded",
        "artist",
        "released",
        "released",
    ),
}


def _place_kind(population: int) -> str:
    return "village" if population < 3000 else "town" if population < 100_000 else "city"


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


@dataclass
class _World:
    people: list[Person]
    places: list[Place]
    organisations: list[Organisation]
    works: list[Work]

    def __post_init__(self) -> None:
        self.born_in: dict[str, list[Person]] = {}
        for p in self.people:
            self.born_in.setdefault(p.birthplace.country, []).append(p)

    def entities(self) -> list[Entity]:
        return [*self.people, *self.places, *self.organisations, *self.works]


def _cycled(rng: Random, options, n: int) -> list:
    """``n`` picks covering every option (n >= len(options)), in random order."""
    picks = [options[i % len(options)] for i in range(n)]
    rng.shuffle(picks)
    return picks


def _grouped(items: list, key: Callable) -> dict:
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def _career_event(rng: Random, people: list[Person], earliest: int, ages: tuple[int, int], latest: int):
    """Someone of ``people`` at an age within ``ages`` in some year from ``earliest`` to ``latest``,
    and that year, so founders and creators are adults and nothing predates its medium."""
    youngest, oldest = ages
    person = rng.choice([p for p in people if p.birth_year + oldest >= earliest])
    return person, rng.randint(max(earliest, person.birth_year + youngest), min(person.birth_year + oldest, latest))


def _founded_by(rng: Random, orgs: list[Organisation], year: int) -> Organisation:
    """An organisation that already existed in ``year`` (the oldest one if none did)."""
    existing = [o for o in orgs if o.founded <= year]
    return rng.choice(existing) if existing else min(orgs, key=lambda o: o.founded)


def _build_world(cfg: SyntheticConfig) -> _World:
    rng = Random(f"semoe-synthetic:{cfg.seed}:world")
    namer = _Namer(rng)
    n = cfg.n_entities

    countries = [namer.word("country") for _ in range(max(3, round(n / 25)))]
    rivers = {c: [namer.word("river") for _ in range(max(2, n // len(countries) // 6))] for c in countries}
    places = []
    for country in _cycled(rng, countries, n):
        population = int(round(10 ** rng.uniform(2.8, 6.2), -2))
        places.append(
            Place(
                namer.word("place"),
                _place_kind(population),
                country,
                rng.choice(rivers[country]),
                rng.randint(700, 1780),
                population,
            )
        )

    first_names = [namer.word("given") for _ in range(max(20, n // 4))]
    people = []
    for sector in _cycled(rng, _SECTORS, n):
        spec, surname = _CATEGORIES[sector], namer.word("surname")
        people.append(
            Person(
                f"{rng.choice(first_names)} {surname}",
                surname,
                rng.randint(spec.born_from, 1975),
                rng.choice(places),
                sector,
                rng.choice(spec.occupations),
            )
        )
    by_sector = _grouped(people, lambda p: p.sector)
    married = sorted(rng.sample(people, round(0.4 * n) // 2 * 2), key=lambda p: (p.birth_year, p.name))
    for a, b in zip(married[::2], married[1::2]):
        a.spouse, b.spouse = b, a

    organisations = []
    for category in _cycled(rng, tuple(_CATEGORIES), n):
        spec = _CATEGORIES[category]
        founder, year = _career_event(rng, by_sector[spec.founder_sector or category], spec.earliest, (25, 55), 2015)
        organisations.append(
            Organisation(
                rng.choice(spec.names).format(s=namer.word()),
                category,
                rng.choice(spec.descriptors),
                founder,
                rng.choice(places),
                year,
            )
        )
    by_category = _grouped(organisations, lambda o: o.category)
    for p in people:
        p.employer = _founded_by(rng, by_category[p.sector], p.birth_year + 45)

    works = []
    for form_name in _cycled(rng, tuple(_FORMS), n):
        form = _FORMS[form_name]
        creator, year = _career_event(rng, by_sector[form.creator_sector], form.earliest, (22, 60), 2020)
        works.append(
            Work(
                rng.choice(form.titles).format(s=namer.word()),
                form_name,
                rng.choice(form.genres),
                creator,
                year,
                _founded_by(rng, by_category[form.publisher_category], year),
            )
        )

    world = _World(people, places, organisations, works)
    for i, entity in enumerate(world.entities()):
        entity.passage_id = f"syn-{i:06d}"
    return world


# --------------------------------------------------------------------------- passages
# A fact is a list of alternative wordings; a wording is one or more sentences.


def _facts(e: Entity) -> tuple[dict, list[list[tuple[str, ...]]]]:
    """Values and fact templates of one entity's main passage (the first fact leads)."""
    if isinstance(e, Person):
        spec = _CATEGORIES[e.sector]
        v = dict(
            name=e.name,
            short=e.surname,
            year=e.birth_year,
            bp=e.birthplace.name,
            bpkind=e.birthplace.kind,
            occ=e.occupation,
            a_occ=_a(e.occupation),
            emp=e.employer.name,
            join=spec.join,
            spouse=e.spouse.name if e.spouse else "",
        )
        facts = [
            [
                ("{name} (born {year} in {bp}) was {a_occ}.",),
                ("{name} was {a_occ}.", "{short} was born in {year} in the {bpkind} of {bp}."),
                ("{name} was {a_occ} born in {bp} in {year}.",),
                ("Born in {bp} in {year}, {name} became a well-known {occ}.",),
            ],
            [
                ("{short} {join} {emp} for many years.",),
                ("For most of a long career, {short} {join} {emp}.",),
                ("{short} later {join} {emp} until retirement.",),
            ],
        ]
        if e.spouse:
            facts.append(
                [
                    ("{short} was married to {spouse}.",),
                    ("{short} and {spouse} were married for many years.",),
                    ("{short} married {spouse}.",),
                ]
            )
        return v, facts
    if isinstance(e, Place):
        v = dict(name=e.name, kind=e.kind, country=e.country, river=e.river, founded=e.founded, pop=f"{e.population:,}")
        return v, [
            [
                ("{name} is a {kind} in {country}.",),
                ("{name} is a {kind} located in {country}.",),
                ("{name} is a {kind} in the country of {country}.",),
            ],
            [
                ("It lies on the {river} River.",),
                ("The {kind} stands on the banks of the {river} River.",),
                ("{name} is situated on the {river} River.",),
            ],
            [
                ("{name} was founded in {founded}.",),
                ("The {kind} was established in {founded}.",),
                ("Records show that the first settlement at {name} was founded in {founded}.",),
            ],
            [
                ("{name} has a population of {pop}.",),
                ("The population of {name} is {pop}.",),
                ("At the most recent census, {name} had {pop} inhabitants.",),
            ],
        ]
    if isinstance(e, Organisation):
        spec = _CATEGORIES[e.category]
        v = dict(
            name=e.name,
            noun=spec.noun,
            a_desc=_a(e.descriptor),
            founder=e.founder.name,
            year=e.founded,
            hq=e.headquarters.name,
            fv=spec.founded,
        )
        return v, [
            [
                ("{name} is {a_desc} {noun}.",),
                ("{name} is {a_desc} {noun} with a long history.",),
                ("{name} is {a_desc} {noun} of some renown.",),
            ],
            [
                ("It was {fv} in {year} by {founder}.",),
                ("{founder} {fv} {name} in {year}.",),
                ("{name} was {fv} by {founder} in {year}.",),
                ("The {noun} was {fv} in {year}; its founder was {founder}.",),
            ],
            [
                ("{name} is based in {hq}.",),
                ("The {noun} is based in {hq}.",),
                ("{name} has always been based in {hq}.",),
            ],
        ]
    form = _FORMS[e.form]
    v = dict(
        name=e.name,
        form=e.form,
        a_genre=_a(e.genre),
        genre=e.genre,
        creator=e.creator.name,
        year=e.year,
        made_by=form.made_by,
        released=form.released,
        issued=form.issued,
        pub=e.publisher.name,
    )
    return v, [
        [
            ("{name} is a {year} {genre} {form} {made_by} {creator}.",),
            ("{name} is {a_genre} {form} by {creator}, first {released} in {year}.",),
            ("{name} is {a_genre} {form} {made_by} {creator}.", "It was first {released} in {year}."),
        ],
        [("It was {issued} by {pub}.",), ("The {form} was {issued} by {pub}.",), ("{pub} {issued} the {form}.",)],
    ]


_FILLERS = {
    "person": (
        "{short} was known among colleagues for a meticulous, patient approach to every project.",
        "Contemporaries described {short} as reserved in public but warm and generous in private.",
        "Letters kept by friends show that {short} corresponded widely and wrote at great length.",
        "{short} kept detailed notebooks, many of which survive in private collections.",
        "Several younger colleagues later credited {short} with shaping their own careers.",
        "Outside of work, {short} was a keen walker and an amateur collector of old maps.",
        "{short} rarely gave interviews and preferred to let the work speak for itself.",
        "Critics have noted the quiet consistency that runs through the output of {short}.",
        "A small circle of admirers championed {short} long before wider recognition arrived.",
        "{short} was remembered as an attentive listener and a demanding but fair mentor.",
        "Much of what is known about the daily routine of {short} comes from the recollections of friends.",
        "{short} spoke several languages and travelled often in search of new ideas.",
        "Though modest about personal achievements, {short} was proud of the people trained along the way.",
        "{short} was an early riser who did most of the important work before noon.",
        "Portraits of {short} show a tall figure with a habitually serious expression.",
        "The methods of {short} were sometimes controversial but were eventually widely adopted.",
        "An annual lecture is still held in honour of {short}.",
        "Friends recalled that {short} loved long dinners, chess and heated arguments about music.",
    ),
    "place": (
        "{name} is known for its narrow streets and its covered market.",
        "The local economy of {name} has long relied on farming, trade and small workshops.",
        "A stone bridge near the centre of {name} is among its oldest surviving structures.",
        "A weekly market in {name} draws visitors from the surrounding countryside.",
        "The climate around {name} is mild, with wet winters and warm, dry summers.",
        "Several churches and a former customs house make up the historic core of {name}.",
        "{name} has a small museum devoted to local crafts and history.",
        "The surrounding hills are popular with walkers and cyclists.",
        "Many of the older houses in {name} are built from a pale local stone.",
        "A regional railway line connects {name} with neighbouring settlements.",
        "The annual harvest festival is the largest public event in {name}.",
        "Local cuisine in {name} is noted for smoked fish, rye bread and plum brandy.",
        "The municipal library of {name} holds a notable collection of old charters.",
        "Fishing and boat building were once important trades along the riverbank.",
        "In recent decades {name} has attracted artists and writers seeking quiet surroundings.",
        "The main square of {name} is lined with cafes and small shops.",
        "A ruined watchtower on a hill above {name} is a popular lookout.",
    ),
    "organisation": (
        "{name} grew steadily during its first decades and opened several regional offices.",
        "{name} has been the subject of several case studies on long-term management.",
        "Staff at {name} are encouraged to take part in training programmes and exchanges.",
        "{name} publishes an annual report describing its activities and finances.",
        "The main building of {name} is a converted warehouse with large arched windows.",
        "Over the years {name} has weathered several difficult periods and reorganisations.",
        "{name} maintains an archive of its early records, open to researchers on request.",
        "Its leadership has traditionally emphasised independence and careful growth.",
        "{name} has supported a number of local charities and cultural events.",
        "{name} is regarded as one of the more influential organisations in its field.",
        "The {noun} is known for its distinctive emblem and a strong internal culture.",
        "Critics have sometimes accused {name} of being slow to adopt new technology.",
        "A modest garden behind the offices of {name} is open to the public in summer.",
        "{name} has received several awards for the quality of its work.",
        "Working conditions at {name} were considered progressive for their time.",
    ),
    "band": (
        "{name} became known for long, improvised live performances.",
        "The line-up of {name} changed several times over the years.",
        "{name} toured widely, playing small venues as well as large festivals.",
        "Critics praised the tight arrangements and distinctive vocal harmonies of {name}.",
        "{name} rehearsed in a converted barn for much of its early career.",
        "Fans of {name} have compiled extensive archives of concert recordings.",
        "The members of {name} also worked on numerous side projects.",
        "{name} was noted for its striking stage costumes and hand-drawn posters.",
        "Several songs by {name} became staples of local radio.",
        "The band took long breaks between tours to write new material.",
        "{name} has cited traditional dance music as an early influence.",
        "Concerts by {name} often ended with lengthy encores.",
        "The sound of {name} is built around layered guitars and a steady, unhurried rhythm section.",
        "{name} remains popular with a devoted audience.",
    ),
    "work": (
        "The {form} received mixed reviews at first but gained admirers over time.",
        "{name} has been praised for its careful structure and vivid atmosphere.",
        "Critics noted the unusual pacing of {name}, which divided early audiences.",
        "Several scholars have written essays on the themes of {name}.",
        "The {form} is often cited as an influence by younger artists.",
        "{name} explores themes of memory, loss and belonging.",
        "A restored edition of {name} appeared many years after its first release.",
        "The meaning of the title {name} has been the subject of much speculation.",
        "{name} was a modest commercial success.",
        "Its closing section is frequently singled out for praise.",
        "Some early copies of {name} are now prized by collectors.",
        "The {form} was later adapted for the stage.",
        "{name} remains popular with audiences and is regularly discussed in reviews.",
        "Its opening has been called one of the most striking of its kind.",
        "Reviewers admired the restraint and precision of {name}.",
    ),
}

_SECTIONS = {
    "person": (
        "Little is recorded about the childhood of {name}, though family letters offer some glimpses.",
        "The career of {name} unfolded gradually, marked by long periods of quiet work.",
        "The legacy of {name} has been reassessed several times by later writers.",
        "Accounts of the personality of {name} vary considerably between sources.",
    ),
    "place": (
        "The history of {name} is preserved mainly in parish records and local chronicles.",
        "Cultural life in {name} centres on its festivals, choirs and small theatres.",
        "The economy of {name} has changed considerably over the past century.",
        "Visitors to {name} are often struck by its quiet, unhurried character.",
    ),
    "organisation": (
        "The early history of {name} is documented in its own archives.",
        "The reputation of {name} has shifted over the decades.",
        "The internal organisation of {name} has been described in several studies.",
    ),
    "band": (
        "The early history of {name} is the subject of many fan accounts.",
        "The live reputation of {name} was built over years of constant touring.",
        "Commentators have long debated the influence of {name}.",
    ),
    "work": (
        "The background to {name} is described in interviews and letters.",
        "The critical reception of {name} has changed considerably over the years.",
        "The legacy of {name} is still debated.",
    ),
}


def _pool(e: Entity) -> str:
    if isinstance(e, Organisation):
        return "band" if e.category == "band" else "organisation"
    return {Person: "person", Place: "place", Work: "work"}[type(e)]


def _words(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences)


def _pad(rng: Random, sentences: list[str], fillers: Iterator[str], first_slot: int) -> str:
    """Insert filler sentences at random places after ``first_slot`` until the passage
    reaches a random length within range, so passages differ in length and layout."""
    target = rng.randint(MIN_WORDS + 10, MAX_WORDS - 15)
    count = _words(sentences)
    for _ in range(_MAX_FILLER_DRAWS):
        if count >= target:
            break
        filler = next(fillers)
        size = len(filler.split())
        if count + size <= MAX_WORDS:
            sentences.insert(rng.randint(first_slot, len(sentences)), filler)
            count += size
    return " ".join(sentences)


def _filler_stream(rng: Random, pool: str, values: dict) -> Iterator[str]:
    """The entity's filler sentences in random order, each used once before any repeats,
    so its main and distractor passages share as little text as possible."""
    order = [template.format(**values) for template in _FILLERS[pool]]
    rng.shuffle(order)
    return itertools.cycle(order)


def _passages(world: _World, cfg: SyntheticConfig) -> list[Passage]:
    text_rng = Random(f"semoe-synthetic:{cfg.seed}:text")
    extra_rng = Random(f"semoe-synthetic:{cfg.seed}:extra")
    entities = world.entities()
    streams = []
    main = []
    for e in entities:
        values, facts = _facts(e)
        wordings = [text_rng.choice(fact) for fact in facts]
        sentences = [s.format(**values) for wording in wordings for s in wording]
        stream = _filler_stream(text_rng, _pool(e), values)
        main.append(Passage(e.passage_id, e.name, _pad(text_rng, sentences, stream, len(wordings[0]))))
        streams.append(stream)
    extra = []
    for k in range(cfg.extra_passages_per_entity):
        for i, (e, stream) in enumerate(zip(entities, streams)):
            openings = _SECTIONS[_pool(e)]
            opening = openings[(i + k) % len(openings)].format(name=e.name)
            text = _pad(extra_rng, [opening], stream, 1)
            extra.append(Passage(f"syn-{len(entities) + len(extra):06d}", e.name, text))
    return main + extra


# --------------------------------------------------------------------------- questions


@dataclass
class _Question:
    question: str
    answers: list[str]
    evidence: list[Entity]  # every entity whose passage is needed, in hop order
    relation: str
    mentions: list[str]  # entity names the question itself contains


_Maker = Callable[[_World, Random], "_Question | None"]
_KINDS: dict[str, Callable[[_World], list]] = {
    "person": lambda w: w.people,
    "place": lambda w: w.places,
    "organisation": lambda w: w.organisations,
    "work": lambda w: w.works,
}


def _place_answers(place: Place) -> list[str]:
    return [place.name, f"{place.name}, {place.country}"]


def _question_words(e: Entity) -> dict:
    """Words a question template may use, so one template reads right for every category."""
    if isinstance(e, Person):
        return dict(name=e.name, emp_noun=_CATEGORIES[e.sector].noun)
    if isinstance(e, Organisation):
        return dict(name=e.name, fv=_CATEGORIES[e.category].founded)
    if isinstance(e, Work):
        form = _FORMS[e.form]
        return dict(
            name=e.name,
            form=e.form,
            make=form.make,
            released=form.released,
            issued=form.issued,
            creator_noun=form.creator_noun,
            pub_noun=_CATEGORIES[form.publisher_category].noun,
        )
    return dict(name=e.name)


# (relation, templates, answers or None when the relation does not apply to the entity)
_SINGLE_HOP: dict[str, list[tuple[str, tuple[str, ...], Callable]]] = {
    "person": [
        (
            "birthplace",
            ("Where was {name} born?", "What is the birthplace of {name}?"),
            lambda p: _place_answers(p.birthplace),
        ),
        ("birth-year", ("In what year was {name} born?", "When was {name} born?"), lambda p: [str(p.birth_year)]),
        ("occupation", ("What was {name}'s occupation?", "What did {name} do for a living?"), lambda p: [p.occupation]),
        (
            "employer",
            ("Which organisation did {name} work for?", "Which {emp_noun} did {name} work for?"),
            lambda p: [p.employer.name],
        ),
        (
            "spouse",
            ("Who was {name} married to?", "Who was the spouse of {name}?"),
            lambda p: [p.spouse.name] if p.spouse else None,
        ),
    ],
    "place": [
        ("country", ("In which country is {name}?", "{name} is located in which country?"), lambda p: [p.country]),
        ("founded", ("In what year was {name} founded?", "When was {name} founded?"), lambda p: [str(p.founded)]),
        (
            "river",
            ("On which river does {name} lie?", "Which river flows through {name}?"),
            lambda p: [p.river, f"{p.river} River"],
        ),
        (
            "population",
            ("What is the population of {name}?", "How many people live in {name}?"),
            lambda p: [f"{p.population:,}", str(p.population)],
        ),
    ],
    "organisation": [
        ("founder", ("Who founded {name}?", "Who was the founder of {name}?"), lambda o: [o.founder.name]),
        ("founded", ("In what year was {name} {fv}?", "When was {name} {fv}?"), lambda o: [str(o.founded)]),
        (
            "headquarters",
            ("Where is {name} based?", "In which place is {name} based?"),
            lambda o: _place_answers(o.headquarters),
        ),
        ("industry", ("What industry is {name} in?",), lambda o: [o.descriptor] if o.category == "company" else None),
        (
            "genre",
            ("What genre of music does {name} play?",),
            lambda o: [o.descriptor] if o.category == "band" else None,
        ),
    ],
    "work": [
        (
            "creator",
            ("Who {make} the {form} {name}?", "Who is the {creator_noun} of the {form} {name}?"),
            lambda w: [w.creator.name],
        ),
        (
            "year",
            ("In what year was the {form} {name} first {released}?", "When was the {form} {name} first {released}?"),
            lambda w: [str(w.year)],
        ),
        ("genre", ("What genre is the {form} {name}?",), lambda w: [w.genre]),
        ("publisher", ("Which {pub_noun} {issued} the {form} {name}?",), lambda w: [w.publisher.name]),
    ],
}

# (relation, subject kind, templates, hop to the bridge entity or None to skip, answers from it)
_BRIDGE: list[tuple[str, str, tuple[str, ...], Callable, Callable]] = [
    (
        "birth-country",
        "person",
        ("In which country was {name} born?", "In what country is the birthplace of {name}?"),
        lambda p: p.birthplace,
        lambda m: [m.country],
    ),
    (
        "employer-founder",
        "person",
        ("Who founded the {emp_noun} that {name} worked for?",),
        lambda p: p.employer if p.employer.founder is not p else None,
        lambda m: [m.founder.name],
    ),
    (
        "employer-headquarters",
        "person",
        ("Where is the {emp_noun} that {name} worked for based?",),
        lambda p: p.employer,
        lambda m: _place_answers(m.headquarters),
    ),
    (
        "spouse-birthplace",
        "person",
        ("Where was the spouse of {name} born?",),
        lambda p: p.spouse,
        lambda m: _place_answers(m.birthplace),
    ),
    (
        "headquarters-country",
        "organisation",
        ("In which country is {name} based?",),
        lambda o: o.headquarters,
        lambda m: [m.country],
    ),
    (
        "founder-birthplace",
        "organisation",
        ("Where was the founder of {name} born?",),
        lambda o: o.founder,
        lambda m: _place_answers(m.birthplace),
    ),
    (
        "founder-birth-year",
        "organisation",
        ("In what year was the founder of {name} born?",),
        lambda o: o.founder,
        lambda m: [str(m.birth_year)],
    ),
    (
        "creator-birthplace",
        "work",
        ("Where was the {creator_noun} of the {form} {name} born?",),
        lambda w: w.creator,
        lambda m: _place_answers(m.birthplace),
    ),
    (
        "creator-birth-year",
        "work",
        ("In what year was the {creator_noun} of the {form} {name} born?",),
        lambda w: w.creator,
        lambda m: [str(m.birth_year)],
    ),
    (
        "publisher-headquarters",
        "work",
        ("Where is the {pub_noun} that {issued} {name} based?",),
        lambda w: w.publisher,
        lambda m: _place_answers(m.headquarters),
    ),
    (
        "publisher-founder",
        "work",
        ("Who founded the {pub_noun} that {issued} {name}?",),
        lambda w: w.publisher if w.publisher.founder is not w.creator else None,
        lambda m: [m.founder.name],
    ),
]


def _lookup_maker(
    relation: str, kind: str, templates: tuple[str, ...], answers: Callable, hop: Callable | None = None
) -> _Maker:
    """A question about one entity of ``kind``: the answer is an attribute of the entity
    itself (single-hop) or of the entity ``hop`` leads to (bridge: both passages are gold)."""

    def make(world: _World, rng: Random) -> _Question | None:
        e = rng.choice(_KINDS[kind](world))
        evidence = [e] if hop is None else [e, hop(e)]
        golds = None if evidence[-1] is None else answers(evidence[-1])
        if golds is None:
            return None
        question = rng.choice(templates).format(**_question_words(e))
        return _Question(question, golds, evidence, relation, [e.name])

    return make


def _earlier_maker(relation: str, kinds: tuple[str, ...], templates: tuple[str, ...], year: Callable) -> _Maker:
    """'Which came first, A or B?' — the answer is a name from the question; ties are skipped."""

    def make(world: _World, rng: Random) -> _Question | None:
        a, b = rng.sample(_KINDS[rng.choice(kinds)](world), 2)
        if year(a) == year(b):
            return None
        first = a if year(a) < year(b) else b
        return _Question(
            rng.choice(templates).format(a=a.name, b=b.name), [first.name], [a, b], relation, [a.name, b.name]
        )

    return make


def _same_country_maker(want_yes: bool) -> _Maker:
    """Yes/no over four passages (both people and both birthplaces); one maker per answer
    keeps yes and no balanced."""

    def make(world: _World, rng: Random) -> _Question | None:
        a = rng.choice(world.people)
        pool = world.born_in[a.birthplace.country] if want_yes else world.people
        b = rng.choice(pool)
        if b is a or (b.birthplace.country == a.birthplace.country) != want_yes:
            return None
        if rng.random() < 0.5:
            a, b = b, a
        templates = ("Were {a} and {b} born in the same country?", "Do {a} and {b} come from the same country?")
        return _Question(
            rng.choice(templates).format(a=a.name, b=b.name),
            ["yes" if want_yes else "no"],
            [a, b, a.birthplace, b.birthplace],
            "same-birth-country",
            [a.name, b.name],
        )

    return make


_MAKERS: dict[str, list[_Maker]] = {
    "single-hop": [
        _lookup_maker(f"{kind}-{relation}", kind, templates, answers)
        for kind, specs in _SINGLE_HOP.items()
        for relation, templates, answers in specs
    ],
    "bridge": [
        _lookup_maker(relation, kind, templates, answers, hop) for relation, kind, templates, hop, answers in _BRIDGE
    ],
    "comparison": [
        _earlier_maker(
            "born-first",
            ("person",),
            ("Who was born first, {a} or {b}?", "Which of {a} and {b} was born earlier?"),
            lambda p: p.birth_year,
        ),
        _earlier_maker(
            "founded-first",
            ("place", "organisation"),
            ("Which was established earlier, {a} or {b}?", "Which is older, {a} or {b}?"),
            lambda e: e.founded,
        ),
        _earlier_maker(
            "released-first",
            ("work",),
            ("Which came out first, {a} or {b}?", "Which appeared earlier, {a} or {b}?"),
            lambda w: w.year,
        ),
        _same_country_maker(True),
        _same_country_maker(False),
    ],
}
_TRIES_PER_MAKER = 50


def question_counts(mix: dict[str, float], n: int) -> dict[str, int]:
    """Split ``n`` by the mix weights (largest remainder), so the counts always sum to ``n``."""
    total = sum(mix.get(t, 0.0) for t in QUESTION_TYPES)
    if total <= 0:
        raise ValueError("synthetic.question_mix must give at least one question type a positive weight")
    shares = {t: n * mix.get(t, 0.0) / total for t in QUESTION_TYPES}
    counts = {t: int(share) for t, share in shares.items()}
    by_remainder = sorted(QUESTION_TYPES, key=lambda t: counts[t] - shares[t])
    for t in by_remainder[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


def _make_questions(world: _World, rng: Random, qtype: str, count: int, seen: set[tuple]) -> list[_Question]:
    """``count`` distinct questions, visiting the makers in turn so every relation is used.
    Distinct means a new relation over a new set of entities, not merely new wording."""
    makers = _MAKERS[qtype]
    out: list[_Question] = []
    turn = misses = 0
    while len(out) < count:
        maker = makers[turn % len(makers)]
        turn += 1
        for _ in range(_TRIES_PER_MAKER):
            q = maker(world, rng)
            key = None if q is None else (q.relation, *sorted(q.mentions))
            if key is not None and key not in seen:
                seen.add(key)
                out.append(q)
                misses = 0
                break
        else:
            misses += 1
            if misses >= len(makers):
                raise ValueError(
                    f"could only make {len(out)} distinct {qtype} questions of {count}; "
                    "lower synthetic.n_questions or raise synthetic.n_entities"
                )
    return out


def _questions(world: _World, cfg: SyntheticConfig) -> list[Example]:
    rng = Random(f"semoe-synthetic:{cfg.seed}:questions")
    seen: set[tuple] = set()
    made = [
        (qtype, q)
        for qtype, count in question_counts(cfg.question_mix, cfg.n_questions).items()
        for q in _make_questions(world, rng, qtype, count, seen)
    ]
    rng.shuffle(made)
    return [
        Example(
            id=f"syn-q{i:05d}",
            question=q.question,
            answers=q.answers,
            dataset="synthetic",
            type=qtype,
            gold_passage_ids=list(dict.fromkeys(e.passage_id for e in q.evidence)),
            meta={"relation": q.relation, "entities": q.mentions},
        )
        for i, (qtype, q) in enumerate(made)
    ]


# --------------------------------------------------------------------------- entry point


@dataclass
class Encyclopedia:
    """The corpus and questions, plus the entities behind them for analysis and tests."""

    passages: list[Passage]
    questions: list[Example]
    people: list[Person]
    places: list[Place]
    organisations: list[Organisation]
    works: list[Work]


# Bump when a change to this module changes the passages, so cached indexes are rebuilt.
GENERATOR_VERSION = 1


def passage_identity(cfg: SyntheticConfig) -> dict:
    """The settings the passages depend on (questions settings leave them unchanged)."""
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "n_entities": cfg.n_entities,
        "extra_passages_per_entity": cfg.extra_passages_per_entity,
    }


def build_encyclopedia(cfg: SyntheticConfig) -> Encyclopedia:
    """The passages and questions for ``cfg``; the same config always gives the same output."""
    world = _build_world(cfg)
    return Encyclopedia(
        _passages(world, cfg), _questions(world, cfg), world.people, world.places, world.organisations, world.works
    )
