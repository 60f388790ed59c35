"""`cptlab mixlaw fit|predict|recommend` through the CLI entry point: contracts, exit codes, messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cptlab.cli import main
from cptlab.diagnose.mixlaw_fit import load_fit
from tests.diagnose.mixlaw_helpers import N0, synthetic, write_csv


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, Flat(out.err)


class Flat(str):
    """stderr as the console wrapped it: `in` ignores whitespace (line breaks inserted at the terminal width)."""

    def __contains__(self, item: str) -> bool:
        return "".join(item.split()) in "".join(self.split())


@pytest.fixture(scope="module")
def fit_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixlaw")
    files = {}
    for target in ("general", "domain"):
        pts, _, _ = synthetic(target, n_D=5, ratios=[0.0, 0.2, 0.5, 0.8, 1.0])
        write_csv(d / f"{target}.csv", pts)
        with pytest.raises(SystemExit) as e:
            main(["mixlaw", "fit", str(d / f"{target}.csv"), "--target", target, "--json", str(d / f"{target}.json"),
                  "--holdout", "0.5", "--quiet"])
        assert e.value.code == 0
        files[target] = d / f"{target}.json"
    return files


def test_fit_json_contract(fit_files):
    data = json.loads(fit_files["general"].read_text())
    assert {"target", "form", "params", "huber", "r2", "n_points", "heldout_error"} <= set(data)
    assert data["target"] == "general" and data["form"] == "fixed-N" and data["n_points"] == 25
    assert set(data["params"]) == {"E", "B", "eta", "beta", "C", "gamma", "epsilon"}
    assert data["r2"] > 0.99 and list(data["heldout_by_ratio"]) == ["0.5"]


def test_fit_prints_table(tmp_path, capsys):
    pts, _, _ = synthetic("domain", n_D=4, ratios=[0.0, 0.5, 1.0])
    write_csv(tmp_path / "p.csv", pts)
    code, out, _ = run(["mixlaw", "fit", str(tmp_path / "p.csv"), "--target", "domain", "--no-holdout"], capsys)
    assert code == 0 and "R²" in out and "epsilon" in out


def test_predict_lists_and_json(fit_files, capsys):
    code, out, _ = run(["mixlaw", "predict", str(fit_files["domain"]), "--D", "1e7,2e7", "--r", "0.1",
                        "--r", "0.5,0.9", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)["predictions"]
    assert len(rows) == 6 and {r["r"] for r in rows} == {0.1, 0.5, 0.9}
    fit = load_fit(fit_files["domain"])
    for r in rows:
        assert r["loss"] == pytest.approx(float(fit.predict(N0, r["D"], r["r"])), rel=1e-12)
    code, out, _ = run(["mixlaw", "predict", str(fit_files["domain"]), "--D", "1e7", "--r", "0.5"], capsys)
    assert code == 0 and "predicted domain loss" in out


def test_recommend_outputs_table_json_plot(fit_files, tmp_path, capsys):
    js, png = tmp_path / "rec.json", tmp_path / "rec.png"
    code, out, _ = run(["mixlaw", "recommend", str(fit_files["general"]), str(fit_files["domain"]),
                        "--budget", "0.03", "--domain-tokens", "5e6", "--json", str(js), "--plot", str(png)], capsys)
    assert code == 0, out
    assert "(a) largest domain ratio" in out and "(b) best ratio" in out and "(c) predicted curves" in out
    data = json.loads(js.read_text())
    assert 0 <= data["budget"]["ratio"] <= 1 and data["budget"]["general_loss"] <= data["budget"]["limit"]
    fd = data["fixed_data"]
    assert fd["D"] == pytest.approx(5e6 / fd["ratio"])
    assert len(data["curves"]) == 21 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,code,match", [
    (["--target", "domain"], 1, "lacks column(s) loss"),
    (["--target", "both"], 2, "--target 'both'"),
])
def test_fit_bad_input_exit_codes(tmp_path, capsys, args, code, match):
    (tmp_path / "p.csv").write_text("N,D,r\n1e6,1000,0.5\n")
    got, out, err = run(["mixlaw", "fit", str(tmp_path / "p.csv"), *args], capsys)
    assert got == code and match in err and "Traceback" not in err


def test_fit_too_few_points_and_nan(tmp_path, capsys):
    pts, _, _ = synthetic("domain", n_D=1, ratios=[0.0, 0.5, 1.0])
    write_csv(tmp_path / "few.csv", pts)
    code, _, err = run(["mixlaw", "fit", str(tmp_path / "few.csv"), "--target", "domain"], capsys)
    assert code == 1 and "too few" in err
    (tmp_path / "nan.csv").write_text("N,D,r,loss\n1e6,1000,0.5,NaN\n")
    code, _, err = run(["mixlaw", "fit", str(tmp_path / "nan.csv"), "--target", "domain"], capsys)
    assert code == 1 and "nan.csv:2: column loss is nan" in err
    code, _, err = run(["mixlaw", "fit", str(tmp_path / "missing.csv"), "--target", "domain"], capsys)
    assert code == 1 and "file not found" in err
    code, _, err = run(["mixlaw", "fit", str(tmp_path), "--target", "domain"], capsys)
    assert code == 1 and "not a study directory" in err


def test_predict_bad_values(fit_files, capsys):
    code, _, err = run(["mixlaw", "predict", str(fit_files["domain"]), "--D", "1e7", "--r", "1.5"], capsys)
    assert code == 2 and "outside [0, 1]" in err
    code, _, err = run(["mixlaw", "predict", str(fit_files["domain"]), "--D", "1e7", "--r", "x"], capsys)
    assert code == 2 and "not a number" in err
    code, _, err = run(["mixlaw", "predict", str(fit_files["domain"]), "--D", "1e7", "--r", "0.5", "--N", "5"],
                       capsys)
    assert code == 2 and "one model size" in err
    code, _, err = run(["mixlaw", "recommend", str(fit_files["domain"]), str(fit_files["domain"])], capsys)
    assert code == 2 and "second fit" in err


def test_recommend_requires_matching_fit(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"target": "domain", "form": "fixed-N", "params": {"E": 1.0}}))
    code, _, err = run(["mixlaw", "recommend", str(bad), "--domain-tokens", "1e6"], capsys)
    assert code == 1 and "params.B" in err
    np.testing.assert_equal(code, 1)


def test_cross_domain_flag(tmp_path, capsys):
    """--cross-domain reads k1, k2 columns; predict needs --k1 --k2 for such a fit."""
    from cptlab.diagnose.mixlaw_fit import predict_params
    from tests.diagnose.mixlaw_helpers import TRUE

    true = {**TRUE["domain"], "F": 0.6, "mu": 1.0, "w2": 2.0}
    lines = ["N,D,r,loss,k1,k2,domain"]
    for name, (k1, k2) in {"a": (4.0, 0.05), "b": (6.0, 0.1), "c": (5.0, 0.3)}.items():
        for D in (2e6, 5e6, 1e7, 2e7):
            for r in (0.0, 0.3, 0.6, 1.0):
                y = float(predict_params(true, "fixed-N", "domain", N0, D, r, k1, k2))
                lines.append(f"{N0},{D},{r},{y!r},{k1},{k2},{name}")
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    code, _, err = run(["mixlaw", "fit", str(tmp_path / "x.csv"), "--target", "domain", "--cross-domain",
                        "--no-holdout", "--json", str(tmp_path / "x.json"), "--quiet"], capsys)
    assert code == 0, err
    code, out, _ = run(["mixlaw", "predict", str(tmp_path / "x.json"), "--D", "1e7", "--r", "0.5", "--k1", "5.5",
                        "--k2", "0.2", "--json"], capsys)
    assert code == 0
    want = float(predict_params(true, "fixed-N", "domain", N0, 1e7, 0.5, 5.5, 0.2))
    assert json.loads(out)["predictions"][0]["loss"] == pytest.approx(want, rel=0.01)
    code, _, err = run(["mixlaw", "predict", str(tmp_path / "x.json"), "--D", "1e7", "--r", "0.5"], capsys)
    assert code == 2 and "--k1" in err
