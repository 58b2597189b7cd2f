"""Words that are not keywords, for synthesizing ``_unknown_`` training examples.

``UNKNOWN_VOCAB``: common English words of one or two syllables plus near-misses of the
mini10 / gsc12 keywords (words that share most of a keyword's sounds: "yet", "noun", "stock",
"going"), which a keyword spotter must learn to reject. None of them is a Speech Commands word,
so clips of real Speech Commands words stay available for measuring unknown-word rejection.
``kwskit data synth DIR --words unknown-vocab`` speaks them.
"""

from __future__ import annotations

NEAR_MISSES = (
    "yet", "yeah", "yell", "yesterday", "chess", "guess", "mess", "less",
    "know", "now", "snow", "note", "noun", "nor", "mow",
    "cup", "pup", "upper", "op", "app",
    "town", "gown", "brown", "crown", "dawn", "nowhere",
    "lift", "loft", "leaf", "lent", "laughed",
    "write", "bright", "fight", "night", "ride", "light", "rights",
    "stock", "stuck", "stomp", "shop", "top", "spot", "stopping",
    "going", "goal", "gold", "ghost", "toe", "glow", "grow", "show",
    "own", "often", "onto", "of", "awful",
)
COMMON = (
    "apple", "about", "after", "again", "always", "answer", "arm", "baby", "back", "ball",
    "band", "bank", "basket", "beach", "before", "better", "black", "blue", "boat", "book",
    "bottle", "box", "bread", "bridge", "brother", "button", "camera", "candle", "car", "card",
    "chair", "cheese", "children", "city", "clock", "cloud", "coffee", "color", "corner",
    "country", "dance", "dinner", "doctor", "door", "dream", "drink", "early", "earth", "egg",
    "evening", "face", "family", "farm", "father", "field", "finger", "fire", "fish", "flower",
    "forest", "friend", "garden", "glass", "green", "hand", "hat", "heart", "hello", "hill",
    "horse", "hotel", "island", "jacket", "kitchen", "lemon", "letter", "little", "machine",
    "maybe", "milk", "minute", "money", "monkey", "morning", "mother", "music", "number",
    "ocean", "orange", "paper", "party", "pencil", "people", "picture", "pillow", "planet",
    "please", "pocket", "purple", "question", "rabbit", "radio", "river", "robot", "salad",
    "school", "sister", "simple", "small", "sorry", "sugar", "summer", "table", "thanks",
    "tiger", "today", "tomato", "turtle", "under", "very", "village", "water", "weather",
    "window", "winter", "yellow", "yonder", "zebra",
)
UNKNOWN_VOCAB = NEAR_MISSES + COMMON
