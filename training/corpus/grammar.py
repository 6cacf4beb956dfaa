"""The caption grammar, written by captions.py and parsed back by checker.py (case and a
final "." are ignored):

  caption  := [ "on a BG background, " ] [ "an image of " | "a picture of " ] body
              [ " on a BG background" ]
  body     := clause { ("; " | ", and " | ". ") clause }
  clause   := [ "there is " [ "also " ] ] np { (", " | " and ") np }    -- these exist
            | np [ " is" ] " " REL " " np                                -- np REL np
            | np " with " np " " REL_IT                                  -- 2nd np REL 1st
            | np " is " ABS                                              -- np REL all others
  np       := ("a" | "an" | "the") [ SIZE ] [ COLOUR ] SHAPE

"a ..." needs at least one matching object and "the ..." exactly one.
"""

REL_WORDS = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
REL_IT_WORDS = {
    "left": ("to its left", "on its left"),
    "right": ("to its right", "on its right"),
    "above": ("above it",),
    "below": ("below it", "under it"),
}
ABS_WORDS = {
    "left": ("on the left",),
    "right": ("on the right",),
    "above": ("at the top", "on top"),
    "below": ("at the bottom",),
}
SIZE_WORDS = {"small": ("small", "little"), "big": ("big", "large")}
