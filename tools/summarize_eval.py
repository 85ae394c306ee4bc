"""The model card's numbers from tools/evaluate_model.sh outputs, one block per folder:

    python tools/summarize_eval.py /work/data/eval4_v4 /work/data/eval5_v5

Real speech on each head (artic_flame, artic_demo, artic_biwi; the studio prompts, the
telephone set and the seven recordings as prompts_HEAD, telephone_HEAD and voices_HEAD; FLAME_sample off life size as size_K) and the
synthetic test's articulation (artic_synth): bilabials closed, open-vowel and bilabial opening,
their ratio, lips in silence, upper face and far field during speech (mm), lag (frames).
Synthetic test (synth): LVE and its ratio to a still face's, MVE, mouth r overall and in the
three never-heard languages. A folder that is one articulation report (`training.articulation
--out`) prints its pooled line.

    python tools/summarize_eval.py --compare /work/data/eval/v4_prompts /work/data/eval/v8_prompts

compares two reports of the same recordings clip by clip: in how many clips the second model's
bilabial opening is narrower and its open-vowel opening wider than the first's, with a two-sided
sign test. Pooled means hide whether a change is consistent; a clip-by-clip count does not.

    python tools/summarize_eval.py --bootstrap /work/data/eval_v4 /work/data/eval_v11

a paired bootstrap over clips, per set of recordings both folders hold (or for two reports): the
clips are drawn with replacement and both models pooled over the same draw, giving a 90% interval
of the second model's open/bilabial ratio over the first's and of the change in bilabials closed
(percentage points). An interval that spans no change says the recordings at hand cannot tell the
two models apart; other recordings like them could rank them either way. With few clips (the five
LibriVox ones) the interval is too narrow: a draw cannot vary more than the clips at hand do.

    python tools/summarize_eval.py --recipes /work/data/eval_v4,/work/data/eval_v4b /work/data/eval_v11,/work/data/eval_v11b

compares two recipes, each by its runs with different seeds (evaluate_model folders, comma-separated):
per set of recordings every folder holds, each run's bilabials closed and ratio, the recipe's
means and the second recipe's means against the first's. One run of a recipe against one run of
another cannot tell a recipe's effect from its seed's: two seeds of version 4's recipe differ by
20% on LibriVox and 2x on the telephone set.

    python tools/summarize_eval.py --misses /work/data/eval_v12

which bilabials a model leaves open, per set of recordings (or for one report): closures by phone
(M, P, B) and by what comes before (silence, a vowel, a consonant), then each missed one (clip,
phone, time, the phone before it, smallest gap above neutral). Reports made before the bilabials
were listed per clip have nothing to show.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

# the synthetic test split's (every 2nd clip) under `python -m training.predict --baseline neutral`
STILL_FACE_LVE_MM2 = 69.4
UNSEEN = ("hu", "ta", "sw")
BILABIAL_FLOOR_MM = 0.1  # training.articulation's GAP_FLOOR: the ratio's bilabial mean is at least this
JUDGES = ("prompts", "telephone", "voices")  # evaluate_model.sh's independent real-speech sets
VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")  # ARPAbet


def is_report(folder: Path) -> bool:
    return (folder / "articulation.json").is_file()


def report(folder: Path) -> dict:
    """A training.articulation report (its articulation.json)."""
    return json.loads((folder / "articulation.json").read_text())


def shared_sets(folders: list[Path]) -> list[str]:
    """The sets of recordings (report subfolders) every evaluate_model folder holds."""
    return sorted(f.name for f in folders[0].iterdir() if all(is_report(r / f.name) for r in folders))


def articulation_line(p: dict) -> str:
    return (f"closed {p['bilabials_closed']}/{p['bilabials']} ({p['closure_rate'] * 100:.0f}%), "
            f"open/bilabial {p['open_vowel_opening_mm']:.2f}/{p['bilabial_opening_mm']:.2f} mm "
            f"(ratio {p['open_to_bilabial_ratio']:.2f}), silence {p['silence_lip_motion_mm']:.2f}, "
            f"upper {p['speech_upper_face_motion_mm']:.2f}, far {p['speech_far_field_motion_mm']:.2f}, "
            f"lag {p['lag_frames_median']}")


def summarize(folder: Path) -> list[str]:
    lines = [f"== {folder}"]
    if is_report(folder):
        pooled = report(folder)["pooled"]
        return lines + [f"  {articulation_line(pooled)}"]
    for head in ("flame", "demo", "biwi", "synth"):
        f = folder / f"artic_{head}" / "articulation.json"
        if f.is_file():
            lines.append(f"  {head:6s} {articulation_line(json.loads(f.read_text())['pooled'])}")
    for judge in JUDGES:
        for head in ("flame", "demo"):
            f = folder / f"{judge}_{head}" / "articulation.json"
            if f.is_file():
                lines.append(f"  {judge}/{head} {articulation_line(json.loads(f.read_text())['pooled'])}")
    lines += size_lines(folder)
    summary, lipsync = folder / "synth" / "summary.json", folder / "synth" / "lipsync.json"
    if summary.is_file() and lipsync.is_file():
        s, ls = json.loads(summary.read_text()), json.loads(lipsync.read_text())
        lve = s["lve"] * 1e6
        by_lang = ls["mouth_r_by_language"]
        unseen = "/".join(f"{by_lang[k]['mouth_r_mean']:.2f}" if k in by_lang else "-" for k in UNSEEN)
        lines.append(f"  synth  LVE {lve:.1f} mm² ({lve / STILL_FACE_LVE_MM2:.2f}x still face), "
                     f"MVE {s['mve'] * 1e3:.2f} mm, mouth r {ls['mouth_r_mean']:.3f}, "
                     f"{'/'.join(UNSEEN)} {unseen}")
    return lines


def size_lines(folder: Path) -> list[str]:
    """evaluate_model.sh's SIZES: FLAME_sample at K times its size (size_K), each with its open-vowel
    opening against life size's (artic_flame) and against K, what motion in proportion would give."""
    sized = sorted((float(f.name[5:]), f) for f in folder.glob("size_*") if is_report(f))
    life = folder / "artic_flame" / "articulation.json"
    base = json.loads(life.read_text())["pooled"]["open_vowel_opening_mm"] if life.is_file() else None
    lines = []
    for k, f in sized:
        p = report(f)["pooled"]
        rel = (f", open vowels {p['open_vowel_opening_mm'] / base:.2f}x life size's (in proportion: {k:g}x)"
               if base else "")
        lines.append(f"  size {k:g}x {articulation_line(p)}{rel}")
    return lines


def sign_test(wins: int, n: int) -> float:
    """Two-sided p of `wins` or a count as far from n/2, among n fair coin flips."""
    k = max(wins, n - wins)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n) if n else 1.0


def compare(a: Path, b: Path) -> list[str]:
    """Clip-by-clip comparison of two articulation reports of the same recordings."""
    ca, cb = (report(f)["clips"] for f in (a, b))
    lines = [f"== {b} against {a}"]
    for key, better, what in (("bilabial_opening_mm", -1, "bilabials narrower"),
                              ("open_vowel_opening_mm", 1, "open vowels wider")):
        pairs = [(ca[n][key], cb[n][key]) for n in sorted(ca.keys() & cb.keys())
                 if ca[n].get(key) is not None and cb[n].get(key) is not None]
        diff = [y - x for x, y in pairs if y != x]
        wins = sum((d > 0) == (better > 0) for d in diff)
        mean = sum(y - x for x, y in pairs) / len(pairs) if pairs else float("nan")
        lines.append(f"  {what}: {wins} of {len(diff)} clips (sign test p {sign_test(wins, len(diff)):.3f}), "
                     f"mean change {mean:+.2f} mm")
    return lines


def _clip_sums(clips: dict, names: list) -> np.ndarray:
    """[clips, 5]: open-vowel count and opening sum, bilabial count and opening sum, bilabials
    closed; a pooled mean over any draw of clips is then a ratio of column sums."""
    rows = []
    for n in names:
        c = clips[n]
        nv = c.get("open_vowels", 0) if c.get("open_vowel_opening_mm") is not None else 0
        nb = c.get("bilabials", 0) if c.get("bilabial_opening_mm") is not None else 0
        rows.append([nv, nv * (c.get("open_vowel_opening_mm") or 0.0), nb, nb * (c.get("bilabial_opening_mm") or 0.0),
                     c.get("bilabials_closed", 0)])
    return np.asarray(rows, np.float64).reshape(-1, 5)


def _pooled(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(open/bilabial ratio, closure rate) of each draw from its summed columns [..., 5]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (sums[..., 1] / sums[..., 0]) / np.maximum(sums[..., 3] / sums[..., 2], BILABIAL_FLOOR_MM)
        return ratio, sums[..., 4] / sums[..., 2]


def bootstrap_pair(a: Path, b: Path, n: int = 2000, seed: int = 0) -> str:
    """Paired bootstrap of two articulation reports of the same recordings (see the docstring)."""
    ca, cb = (report(f)["clips"] for f in (a, b))
    names = sorted(ca.keys() & cb.keys())
    sa, sb = _clip_sums(ca, names), _clip_sums(cb, names)
    draws = np.random.default_rng(seed).multinomial(len(names), np.full(len(names), 1 / len(names)), size=n)
    (ra, ka), (rb, kb) = _pooled(draws @ sa), _pooled(draws @ sb)
    (r0a, k0a), (r0b, k0b) = _pooled(sa.sum(0)), _pooled(sb.sum(0))
    rel, dk = rb / ra, (kb - ka) * 100
    ok = np.isfinite(rel) & np.isfinite(dk)
    lo, hi = np.percentile(rel[ok], [5, 95])
    klo, khi = np.percentile(dk[ok], [5, 95])
    return (f"ratio {r0b / r0a:.2f}x (90% {lo:.2f}-{hi:.2f}), closed {(k0b - k0a) * 100:+.1f} points "
            f"(90% {klo:+.1f} to {khi:+.1f}); {len(names)} clips, {int(ok.sum())} draws")


def bootstrap(a: Path, b: Path, n: int = 2000, seed: int = 0) -> list[str]:
    """bootstrap_pair for two reports, or for each set of recordings two evaluate_model folders share."""
    if is_report(a):
        return [f"== {b} against {a}", f"  {bootstrap_pair(a, b, n, seed)}"]
    return [f"== {b} against {a}"] + [f"  {s:16s} {bootstrap_pair(a / s, b / s, n, seed)}" for s in shared_sets([a, b])]


def compare_recipes(a: list[Path], b: list[Path]) -> list[str]:
    """Seed means of two recipes' evaluate_model folders, per set of recordings all of them hold."""
    lines = [f"== {', '.join(map(str, b))} against {', '.join(map(str, a))}"]
    for s in shared_sets([*a, *b]):
        means = []
        for recipe in (a, b):
            pooled = [report(r / s)["pooled"] for r in recipe]
            ratios = [p["open_to_bilabial_ratio"] for p in pooled]
            closed = [p["bilabials_closed"] for p in pooled]
            means.append((sum(ratios) / len(ratios), sum(closed) / len(closed), ratios, closed, pooled[0]["bilabials"]))
        (ra, ka, *_), (rb, kb, *_) = means
        each = " | ".join(f"closed {'/'.join(map(str, k))} of {n}, ratio {'/'.join(f'{x:.2f}' for x in r)} (mean {km:.1f}, {rm:.2f}x)"
                          for rm, km, r, k, n in means)
        lines.append(f"  {s:16s} {each} | second/first {rb / ra:.2f}x, closed {kb - ka:+.1f}")
    return lines


def misses_lines(rep: Path) -> list[str]:
    """Closures by phone and by context in one report, then the bilabials it missed."""
    events = [(name, e) for name, c in sorted(report(rep)["clips"].items()) for e in c.get("bilabial_events", [])]
    if not events or "after" not in events[0][1]:
        return ["  (no bilabials listed with what comes before them: the report is older than that part of "
                "training.articulation; make it again)"]

    def rate(group) -> str:
        group = list(group)
        return f"{sum(e['closed'] for e in group)}/{len(group)}"

    by_phone = ", ".join(f"{p} {rate(e for _, e in events if e['phone'] == p)}"
                         for p in ("M", "P", "B") if any(e["phone"] == p for _, e in events))
    context = {"silence": lambda a: a == "SIL", "a vowel": lambda a: a in VOWELS,
               "a consonant": lambda a: a != "SIL" and a not in VOWELS}
    by_context = ", ".join(f"after {k} {rate(e for _, e in events if is_(e['after']))}" for k, is_ in context.items())
    lines = [f"  closed: {by_phone}; {by_context}"]
    lines += [f"    missed {name} {e['phone']} at {e['start_s']:.2f} s after {e['after']}: "
              f"smallest gap {e['min_gap_mm']:.2f} mm above neutral" for name, e in events if not e["closed"]]
    return lines


def misses(folder: Path) -> list[str]:
    if is_report(folder):
        return [f"== {folder}"] + misses_lines(folder)
    lines = [f"== {folder}"]
    for s in shared_sets([folder]):
        lines += [f" {s}"] + misses_lines(folder / s)
    return lines


def _folders(arg: str) -> list[Path]:
    return [Path(x) for x in arg.split(",") if x]


PAIRED = {"--compare": (lambda a, b: compare(Path(a), Path(b)), "REPORT_A REPORT_B"),
          "--bootstrap": (lambda a, b: bootstrap(Path(a), Path(b)), "A B (two reports or two evaluate_model folders)"),
          "--recipes": (lambda a, b: compare_recipes(_folders(a), _folders(b)), "A1,A2[,...] B1,B2[,...] (evaluate_model folders)")}


def main(argv=None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    if argv[:1] and argv[0] in PAIRED:
        run, args = PAIRED[argv[0]]
        if len(argv) != 3:
            print(f"usage: summarize_eval.py {argv[0]} {args}", file=sys.stderr)
            return 2
        print("\n".join(run(argv[1], argv[2])))
        return 0
    show, usage = summarize, __doc__.strip().splitlines()[2].strip()
    if argv[:1] == ["--misses"]:
        show, usage, argv = misses, "usage: summarize_eval.py --misses FOLDER... (evaluate_model folders or reports)", argv[1:]
    folders = [Path(a) for a in argv]
    if not folders:
        print(usage, file=sys.stderr)
        return 2
    for folder in folders:
        print("\n".join(show(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
