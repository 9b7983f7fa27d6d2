"""The words of the built-in language. Small on purpose: a few million parameters must learn it.

Every list is a tuple in a fixed order: samplers index into them, so reordering a list changes
the data of every seed.
"""

CATEGORIES = {  # plural name -> items; every item is one short word, no item in two categories
    "fruits": ("apple", "pear", "plum", "fig", "lime", "grape", "peach", "lemon"),
    "animals": ("cat", "dog", "cow", "fox", "owl", "pig", "hen", "bee"),
    "colors": ("red", "blue", "green", "pink", "gray", "black", "white", "brown"),
    "tools": ("saw", "drill", "hammer", "axe", "rake", "spade", "wrench", "pliers"),
    "drinks": ("tea", "milk", "juice", "water", "soda", "coffee", "cocoa", "cider"),
    "names": ("tom", "ann", "bob", "sue", "max", "eve", "sam", "kim"),
}
CATEGORY_NAMES = tuple(CATEGORIES)
SINGULAR = {"fruits": "fruit", "animals": "animal", "colors": "color", "tools": "tool",
            "drinks": "drink", "names": "name"}
ALL_ITEMS = frozenset(w for items in CATEGORIES.values() for w in items)

COLORS = CATEGORIES["colors"]
OBJECTS = ("key", "ball", "cup", "hat", "sock", "book", "coin", "ring", "kite", "lamp")
PLACES = ("box", "bag", "car", "bed", "desk", "shed")
PREPOSITIONS = ("in", "on", "under")

# Words a labeler would call rude: any of them anywhere costs harmlessness.
RUDE = ("stupid", "dumb", "idiot", "ugly", "loser")

# The demonstrator's polite closings: the surface feature of the exploit (see docs/tasks.md).
CLOSINGS = ("hope this helps.", "glad to help.", "have a nice day.")

# Padding a rambling answer adds (no facts, nothing rude: only length).
RAMBLES = (
    "i think that is all.",
    "that was a fun one to do.",
    "let me know if you want more.",
    "i did my best here.",
    "this is a good question.",
    "i like this kind of task.",
)

RUDE_REMARKS = ("that is a dumb question.", "you are stupid.", "what an idiot.", "ugly task, loser.")

# Words a "repeat" prompt asks to copy.
REPEAT_POOL = tuple(sorted(set(OBJECTS + PLACES + COLORS + CATEGORIES["animals"] + CATEGORIES["fruits"])))
