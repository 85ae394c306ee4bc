"""tools/summarize_eval.py: the card's lines from an evaluate_model.sh folder and from one report."""
import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("summarize_eval", ROOT / "tools" / "summarize_eval.py")
summ = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summ)

POOLED = {"bilabials_closed": 27, "bilabials": 29, "closure_rate": 27 / 29, "open_vowel_opening_mm": 4.5,
          "bilabial_opening_mm": 1.5, "open_to_bilabial_ratio": 3.0, "silence_lip_motion_mm": 0.2,
          "speech_upper_face_motion_mm": 0.1, "speech_far_field_motion_mm": 0.05, "lag_frames_median": 0}
LINE = ("closed 27/29 (93%), open/bilabial 4.50/1.50 mm (ratio 3.00), silence 0.20, upper 0.10, "
        "far 0.05, lag 0")


def test_one_report_folder(tmp_path):
    (tmp_path / "articulation.json").write_text(json.dumps({"pooled": POOLED}))
    assert summ.summarize(tmp_path) == [f"== {tmp_path}", f"  {LINE}"]


def test_evaluate_model_folder(tmp_path):
    (tmp_path / "artic_demo").mkdir()
    (tmp_path / "artic_demo" / "articulation.json").write_text(json.dumps({"pooled": POOLED}))
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "summary.json").write_text(json.dumps({"lve": 19.4e-6, "mve": 0.5e-3}))
    by_lang = {"hu": {"mouth_r_mean": 0.95}, "sw": {"mouth_r_mean": 0.96}}
    (tmp_path / "synth" / "lipsync.json").write_text(
        json.dumps({"mouth_r_mean": 0.934, "mouth_r_by_language": by_lang}))
    (tmp_path / "prompts_flame").mkdir()
    (tmp_path / "prompts_flame" / "articulation.json").write_text(json.dumps({"pooled": POOLED}))
    (tmp_path / "voices_demo").mkdir()
    (tmp_path / "voices_demo" / "articulation.json").write_text(json.dumps({"pooled": POOLED}))
    (tmp_path / "artic_flame").mkdir()
    (tmp_path / "artic_flame" / "articulation.json").write_text(json.dumps({"pooled": POOLED}))
    for k, vowel in (("1.5", 6.75), ("0.67", 2.25)):  # in proportion at 1.5x, half at 0.67x
        (tmp_path / f"size_{k}").mkdir()
        (tmp_path / f"size_{k}" / "articulation.json").write_text(
            json.dumps({"pooled": POOLED | {"open_vowel_opening_mm": vowel}}))
    lines = summ.summarize(tmp_path)
    assert lines[1] == f"  flame  {LINE}"
    assert lines[2] == f"  demo   {LINE}"
    assert lines[3] == f"  prompts/flame {LINE}"
    assert lines[4] == f"  voices/demo {LINE}"
    assert lines[5].startswith("  size 0.67x closed 27/29") and lines[5].endswith(
        "open vowels 0.50x life size's (in proportion: 0.67x)")
    assert lines[6].startswith("  size 1.5x ") and lines[6].endswith("1.50x life size's (in proportion: 1.5x)")
    assert lines[7] == ("  synth  LVE 19.4 mm² (0.28x still face), MVE 0.50 mm, mouth r 0.934, "
                        "hu/ta/sw 0.95/-/0.96")
    assert summ.main([]) == 2


def test_compare_counts_clips_and_tests_the_sign(tmp_path):
    def report(folder, bil, vow, extra=False):
        folder.mkdir()
        clips = {f"c{i}": {"bilabial_opening_mm": b, "open_vowel_opening_mm": v} for i, (b, v) in enumerate(zip(bil, vow))}
        if extra:  # a clip the other report skipped (the aligner failed there) is left out
            clips["only_here"] = {"bilabial_opening_mm": 9.0, "open_vowel_opening_mm": 0.0}
        (folder / "articulation.json").write_text(json.dumps({"clips": clips}))
        return folder

    a = report(tmp_path / "a", [1.0] * 10, [3.0] * 10)
    b = report(tmp_path / "b", [0.5] * 9 + [1.0], [4.0] * 8 + [2.0] * 2, extra=True)
    lines = summ.compare(a, b)
    assert lines[1] == "  bilabials narrower: 9 of 9 clips (sign test p 0.004), mean change -0.45 mm"
    assert lines[2] == "  open vowels wider: 8 of 10 clips (sign test p 0.109), mean change +0.60 mm"
    assert summ.sign_test(5, 10) == 1.0 and summ.sign_test(0, 0) == 1.0
    assert summ.main(["--compare", str(a)]) == 2


def _report(folder, clips):
    folder.mkdir(parents=True)
    (folder / "articulation.json").write_text(json.dumps({"clips": clips}))
    return folder


def _clip(bil_mm, vowel_mm, closed, n_bil=4, n_vowel=6):
    return {"bilabials": n_bil, "bilabials_closed": closed, "bilabial_opening_mm": bil_mm,
            "open_vowels": n_vowel, "open_vowel_opening_mm": vowel_mm}


def test_bootstrap_is_exact_for_a_uniform_change_and_spreads_for_a_mixed_one(tmp_path):
    base = {f"c{i}": _clip(1.0 + 0.1 * i, 4.0 + 0.2 * i, 3) for i in range(12)}
    a = _report(tmp_path / "a" / "prompts_flame", base)
    halved = _report(tmp_path / "b" / "prompts_flame",
                     {n: c | {"bilabial_opening_mm": c["bilabial_opening_mm"] / 2} for n, c in base.items()})
    # every draw pools the same clips for both models, so halving every bilabial doubles every draw's ratio
    assert summ.bootstrap_pair(a, halved) == ("ratio 2.00x (90% 2.00-2.00), closed +0.0 points "
                                              "(90% +0.0 to +0.0); 12 clips, 2000 draws")
    # half the clips narrower and one more closure in each: the interval holds the estimate and has width
    mixed = _report(tmp_path / "m", {n: (c | {"bilabial_opening_mm": 0.5, "bilabials_closed": 4} if i % 2 else c)
                                     for i, (n, c) in enumerate(base.items())})
    line = summ.bootstrap_pair(a, mixed)
    point, lo, hi = (float(x) for x in re.match(r"ratio ([\d.]+)x \(90% ([\d.]+)-([\d.]+)\)", line).groups())
    assert lo < point < hi and lo > 1.0
    assert "closed +12.5 points" in line  # 6 more of 48
    # folders: only the sets both hold; a bilabial mean below 0.1 mm counts as 0.1 mm, as in the report
    _report(tmp_path / "a" / "artic_flame", {"c": _clip(0.01, 3.0, 4)})
    _report(tmp_path / "b" / "artic_flame", {"c": _clip(-0.2, 3.0, 4)})
    _report(tmp_path / "a" / "telephone_demo", {"c": _clip(1.0, 3.0, 4)})
    lines = summ.bootstrap(tmp_path / "a", tmp_path / "b")
    assert [ln.split()[0] for ln in lines[1:]] == ["artic_flame", "prompts_flame"]
    assert lines[1].split()[2] == "1.00x"
    assert summ.main(["--bootstrap", str(a)]) == 2


def test_recipes_are_compared_by_their_seed_means(tmp_path):
    def run(name, ratio, closed, extra_set=False):
        for s in ("prompts_flame",) + (("telephone_demo",) if extra_set else ()):
            (tmp_path / name / s).mkdir(parents=True)
            (tmp_path / name / s / "articulation.json").write_text(json.dumps(
                {"pooled": POOLED | {"open_to_bilabial_ratio": ratio, "bilabials_closed": closed}}))
        return str(tmp_path / name)

    a = f"{run('a0', 4.0, 20, extra_set=True)},{run('a1', 6.0, 22)}"
    b = f"{run('b0', 5.5, 25, extra_set=True)},{run('b1', 5.5, 24)}"
    lines = summ.compare_recipes(summ._folders(a), summ._folders(b))
    assert len(lines) == 2  # telephone_demo: not every run holds it
    assert lines[1] == ("  prompts_flame    closed 20/22 of 29, ratio 4.00/6.00 (mean 21.0, 5.00x) | "
                        "closed 25/24 of 29, ratio 5.50/5.50 (mean 24.5, 5.50x) | second/first 1.10x, closed +3.5")
    assert summ.main(["--recipes", a]) == 2


def _event(phone, start, after, closed, gap=0.0):
    return {"phone": phone, "start_s": start, "end_s": start + 0.08, "after": after,
            "min_gap_mm": gap, "opening_mm": gap + 0.5, "closed": closed}


def test_misses_groups_closures_by_phone_and_context_and_lists_the_missed(tmp_path, capsys):
    clips = {"b": {"bilabial_events": [_event("M", 0.4, "SIL", False, 1.234), _event("B", 1.0, "AH", True)]},
             "a": {"bilabial_events": [_event("P", 0.2, "SIL", True), _event("M", 0.9, "IY", False, 0.5),
                                       _event("M", 1.5, "NG", True)]}}
    _report(tmp_path / "ev" / "prompts_flame", clips)
    _report(tmp_path / "ev" / "artic_demo", {"old": {"bilabial_events": [{"phone": "M", "closed": True}]}})
    lines = summ.misses(tmp_path / "ev")
    assert lines == [
        f"== {tmp_path / 'ev'}",
        " artic_demo",
        "  (no bilabials listed with what comes before them: the report is older than that part of "
        "training.articulation; make it again)",
        " prompts_flame",
        "  closed: M 1/3, P 1/1, B 1/1; after silence 1/2, after a vowel 1/2, after a consonant 1/1",
        "    missed a M at 0.90 s after IY: smallest gap 0.50 mm above neutral",
        "    missed b M at 0.40 s after SIL: smallest gap 1.23 mm above neutral",
    ]
    assert summ.main(["--misses", str(tmp_path / "ev" / "prompts_flame")]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "  closed: M 1/3, P 1/1, B 1/1; after silence 1/2, after a vowel 1/2, after a consonant 1/1"
    assert summ.main(["--misses"]) == 2
