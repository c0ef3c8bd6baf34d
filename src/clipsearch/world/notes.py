"""The demo's text notes: a small notebook on topics that have nothing to do with the shape scenes.

``clipsearch demo`` indexes them beside the scenes, so the demo store holds texts that must not
come up for a shape query (and shapes that must not come up for a question about a recipe): the
case where raw cosines mislead, since a text query sits nearer to every text than to any image.
:data:`NOTE_QUESTIONS` are questions the notes answer, with their answers; :data:`OFF_TOPIC_QUESTIONS`
are questions they do not answer. Both are held out: nothing in clipsearch is fitted on them, and
``clipsearch.calibration`` fits nothing on the notes but their own sentences.
"""

from __future__ import annotations

NOTES_FILE = "notes.md"
"""The name the notes get in the demo folder."""

NOTES = """\
# Travel notes

## Kilimanjaro

Mount Kilimanjaro in Tanzania is the highest mountain in Africa, rising 5,895 metres above sea level.
Most climbers take the Machame route, which needs about seven days up and down.
The best months to climb are January, February and September, when the weather is dry.

## Lisbon

Lisbon is the capital of Portugal and sits on seven hills above the Tagus river.
Tram 28 climbs through the old Alfama quarter and is the easiest way to see the city.
Pasteis de nata, small custard tarts, are sold warm in the bakeries of Belem.

## Kyoto

Kyoto was the imperial capital of Japan for more than a thousand years.
The Fushimi Inari shrine is famous for its thousands of orange torii gates.
Cherry blossoms usually open in the first week of April.

# Kitchen

## Sourdough bread

A sourdough starter is fed with equal weights of flour and water once a day.
The dough rests overnight in the fridge, which gives the bread a sour taste.
Bake the loaf at 250 degrees Celsius in a covered pot for the first twenty minutes.

## Lentil soup

Red lentils cook in about fifteen minutes and need no soaking.
Fry onion, garlic and cumin in olive oil before adding the lentils and stock.
A squeeze of lemon juice at the end brightens the soup.

# Garden

Tomatoes need at least six hours of sun a day and deep watering twice a week.
Plant garlic cloves in October; they are harvested in July of the next year.
Slugs can be kept off lettuce with copper tape around the beds.

# Bicycle maintenance

Check the tyre pressure every week; road tyres usually run at six to eight bar.
A chain should be cleaned and oiled every 300 kilometres, more often in the rain.
Replace brake pads when the grooves on them are worn away.

# Music practice

Practise scales slowly with a metronome set to 60 beats per minute.
The violin has four strings tuned G, D, A and E.
Learning a piece from memory is easier when it is split into short phrases.
"""

NOTE_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("How high is Mount Kilimanjaro?", "5,895 metres"),
    ("Which route do most climbers take up Kilimanjaro?", "Machame"),
    ("Which river does Lisbon sit above?", "Tagus"),
    ("Which tram goes through the Alfama quarter?", "Tram 28"),
    ("What is the Fushimi Inari shrine famous for?", "orange torii gates"),
    ("When do cherry blossoms open in Kyoto?", "first week of April"),
    ("How often is a sourdough starter fed?", "once a day"),
    ("How long do red lentils take to cook?", "about fifteen minutes"),
    ("How many hours of sun do tomatoes need?", "six hours"),
    ("When should garlic be planted?", "October"),
    ("How often should a bicycle chain be oiled?", "every 300 kilometres"),
    ("How are the violin's strings tuned?", "G, D, A and E"),
)
"""Questions the notes answer, each with its answer as the notes word it."""

OFF_TOPIC_QUESTIONS: tuple[str, ...] = (
    "Who won the football World Cup in 1998?",
    "What is the boiling point of mercury?",
    "How many moons does Neptune have?",
    "Who wrote the novel War and Peace?",
    "What was the company's revenue in the last quarter?",
    "How do I reset my email password?",
    "What is the population of Canada?",
    "Which programming language was created by Guido van Rossum?",
    "When was the Eiffel Tower built?",
    "What is the speed of light in a vacuum?",
    "Who painted the Mona Lisa?",
    "How much does a new passport cost?",
)
"""Questions the notes do not answer (nothing in them is about these topics)."""
