"""espeak-ng phoneme mnemonics of any language -> the ARPAbet-like phones of :mod:`.visemes`.

espeak-ng names phonemes with a Kirshenbaum-like ASCII alphabet that differs a little per language
(``a`` ``e`` ``i`` ``o`` ``u`` ``y`` ``@`` ``&``=æ ``A``=ɑ ``E``=ɛ ``I``=ɪ ``O``=ɔ ``U``=ʊ ``V``=ʌ
``Y``=ø/ʏ ``W``=œ ``8``=ɵ ``3``=ɜ/ɐ ``0``=ɒ; ``S``=ʃ ``Z``=ʒ ``T``=θ ``D``=ð ``N``=ŋ ``C``=ç ``x``
``X``=χ ``H``=ħ/ɦ ``Q``=ɣ ``B``=β ``J``=ɟ ``*``=ɾ ``?``/``!``=ʔ ...) with modifiers appended:
``:`` length, ``~`` nasal, ``#`` aspirated or variant, ``;`` palatalised, ``.`` retroflex, ``[``
dental, ``^`` palatal, ``-`` syllabic or reduced, ``h`` aspirated (``ph`` ``kh`` in Mandarin and
Korean), ``H`` pharyngealised (Arabic), digits for variants. Diphthongs and affricates are one
mnemonic (``aI`` ``uo`` ``iou`` ``ts``).

:func:`espeak_phones` returns one or more ARPAbet phones per mnemonic (a diphthong outside the
ARPAbet set becomes its vowels, which share the phone's duration) and whether the mnemonic was
understood; :func:`espeak_to_arpabet` gives one phone. The mapping guarantees what the lip-sync
targets need: every bilabial (``p b m``, aspirated ``p#`` ``b#`` ``ph``, syllabic ``m-``, tense
``p-``, Spanish ``B``=β) maps to p/b/m, labiodentals to f/v, rounded vowels to rounded phones.
Unknown mnemonics fall back to ``ax`` (a neutral half-open mouth) and are counted by the caller.
"""
from __future__ import annotations

import functools

FALLBACK = "ax"
ARPABET_DIPHTHONGS = ("ay", "aw", "oy", "ey", "ow")

# English voices keep their own table (espeak's English mnemonics; "a" is æ, "o" is a diphthong).
ENGLISH = {
    # vowels
    "a": "ae", "aa": "ae", "a#": "ax", "A:": "aa", "A@": "aa", "A": "aa", "0": "aa", "V": "ah",
    "@": "ax", "@2": "ax", "@5": "ax", "@-": "ax", "@L": "el", "3:": "er", "3": "er", "@r": "er",
    "E": "eh", "e@": "eh", "e": "eh", "eI": "ey", "I": "ih", "I2": "ih", "I#": "ih", "i": "iy",
    "i:": "iy", "i@": "iy", "i@3": "iy", "O:": "ao", "O@": "ao", "O": "ao", "O2": "ao", "OI": "oy",
    "o@": "ao", "oU": "ow", "o": "ow", "U": "uh", "u:": "uw", "U@": "uh", "u": "uw", "aI": "ay",
    "aU": "aw", "aI@": "ay", "aU@": "aw", "aI3": "ay", "IR": "ih", "VR": "ah", "ju:": "uw",
    # consonants
    "p": "p", "b": "b", "t": "t", "d": "d", "k": "k", "g": "g", "f": "f", "v": "v", "s": "s",
    "z": "z", "h": "hh", "m": "m", "n": "n", "l": "l", "r": "r", "w": "w", "j": "y", "T": "th",
    "D": "dh", "S": "sh", "Z": "zh", "N": "ng", "tS": "ch", "dZ": "jh", "?": "t", "x": "hh",
    "t2": "t", "d2": "d", "n-": "n", "l/": "l", "l/2": "l", "r-": "r", "z/2": "z", "*": "dx",
    "#": "t", "C": "hh", "W": "w", ";": "y",
}

# Single symbols (after the modifiers are removed) in every other language.
_VOWELS = {
    "a": "aa", "A": "aa", "0": "aa", "&": "ae", "V": "ah", "3": "ah", "@": "ax",
    "e": "eh", "E": "eh", "i": "iy", "I": "ih", "o": "ao", "O": "ao",
    "u": "uw", "U": "uh", "y": "uw", "Y": "uh", "W": "ao", "8": "uh",
}
_CONSONANTS = {
    # bilabials, labiodentals (lips)
    "p": "p", "b": "b", "m": "m", "B": "b", "f": "f", "v": "v", "F": "f", "w": "w",
    # coronals
    "t": "t", "d": "d", "n": "n", "l": "l", "L": "l", "r": "r", "R": "r", "*": "dx", "s": "s",
    "z": "z", "S": "sh", "Z": "zh", "T": "th", "D": "dh", "c": "k", "J": "d",
    # dorsals, gutturals
    "k": "k", "g": "g", "q": "k", "G": "g", "Q": "g", "N": "ng", "x": "hh", "X": "hh", "C": "hh",
    "h": "hh", "H": "hh", "j": "y", ";": "y", "?": "hh", "!": "hh",
}
_SINGLE = {**_VOWELS, **_CONSONANTS}

# Whole mnemonics that the generic rules would get wrong (or that merit one ARPAbet phone).
_GENERAL = {
    # affricates
    "tS": "ch", "dZ": "jh", "ts": ("t", "s"), "dz": ("d", "z"), "tS;": "ch", "dZ;": "jh",
    "ts;": "ch", "dz;": "jh", "ts.": "ch", "dz.": "jh", "t_s\\": "ch", "d_z\\": "jh", "pf": ("p", "f"),
    # retroflex / alveolo-palatal sibilants, retroflex approximant
    "s.": "sh", "z.": "r", "S;": "sh", "Z;": "zh", "s\\": "sh", "z\\": "zh", "r.": "r", "r`": "dx",
    # Japanese: bilabial fricative (fu), uvular n
    "p\\": "f", "N\\": "ng",
    # trills, taps
    "**": "r", "R2": "r", "r-": "r", "l-": "l",
    # diphthongs that ARPAbet has
    "aI": "ay", "ai": "ay", "aI@": "ay", "aU": "aw", "au": "aw", "Au": "aw", "OY": "oy", "OI": "oy",
    "oI": "oy", "oi": "oy", "eI": "ey", "ei": "ey", "EI": "ey", "oU": "ow", "ou": "ow",
    # Mandarin finals
    "ong": ("ao", "ng"), "i.": "ih", "i[": "ih",
}
# Per-language exceptions (key: the first part of the voice name).
_LANG = {
    "ko": {"u-": "ih"},  # Korean eu is unrounded
}
_MODIFIERS = set(":~#;.[^-_\\`'/0123456789")


def _lang_key(lang: str) -> str:
    return (lang or "").split("+")[0].split("-")[0].lower()


def _aspirated(ph: str) -> str | None:
    """'ph' 'kh' 'tS;h' 'ts.h' (aspirated) and 'dH' 'sH' (Arabic emphatics) -> the plain consonant."""
    if len(ph) >= 2 and ph[-1] in "hH":
        base = ph[:-1]
        if base in _GENERAL or (base.rstrip("".join(_MODIFIERS)) in _CONSONANTS and base[0] not in "hH"):
            return base
    return None


def _strip(ph: str) -> str:
    return "".join(ch for ch in ph if ch not in _MODIFIERS)


def _as_tuple(v) -> tuple:
    return v if isinstance(v, tuple) else (v,)


@functools.lru_cache(maxsize=8192)
def espeak_phones(ph: str, lang: str = "en") -> tuple[tuple[str, ...], bool]:
    """ARPAbet phones of one espeak-ng phoneme mnemonic in a language, and whether it was known.

    Pauses (``_``, ``_:``, ``_!`` ...) give ``('sil',)``; an unknown mnemonic gives
    ``(FALLBACK,), False``.
    """
    ph = ph.strip().lstrip("'%=,")
    if not ph or ph.startswith("_") or ph == ":":
        return ("sil",), True
    key = _lang_key(lang)
    if key == "en":
        if ph in ENGLISH:
            return (ENGLISH[ph],), True
        stripped = ph.rstrip("0123456789#-/;")
        if stripped in ENGLISH:
            return (ENGLISH[stripped],), True
    table = _LANG.get(key, {})
    for cand in (ph, _aspirated(ph)):
        if cand is None:
            continue
        for t in (table, _GENERAL, _SINGLE):
            if cand in t:
                return _as_tuple(t[cand]), True
        # modifiers removed: 'p#' -> 'p', 'm-' -> 'm', 'a:' -> 'a', 'E~' -> 'E', 't[' -> 't'
        s = _strip(cand)
        for t in (table, _GENERAL, _SINGLE):
            if s and s in t:
                return _as_tuple(t[s]), True
    # a sequence of symbols (diphthongs, triphthongs, consonant clusters): longest match first
    s = _strip(ph) if _strip(ph) else ph
    out, i = [], 0
    while i < len(s):
        for n in (3, 2, 1):
            piece = s[i:i + n]
            if len(piece) == n and (piece in _GENERAL or piece in _SINGLE):
                out.extend(_as_tuple(_GENERAL.get(piece) or _SINGLE[piece]))
                i += n
                break
        else:
            return (FALLBACK,), False
    return (tuple(out), True) if out else ((FALLBACK,), False)


def espeak_to_arpabet(ph: str, lang: str = "en") -> str:
    """One ARPAbet phone for an espeak-ng mnemonic (the first, for multi-phone mnemonics)."""
    return espeak_phones(ph, lang)[0][0]
