"""tools/create_data.py generated: a bank of generated objects from the tiny world's bank with a
tiny trained LiDAR generator (the cameras kept real), its counts printed, and bad input one line
naming the file or option (exit 2)."""

from __future__ import annotations

import pytest

from perception.generative.bank import ObjectBank
from tests.generative_helpers import TINY_HART, TINY_HART_LIDAR
from tools.create_data import main as create_data
from tools.train_generator import main as train_generator

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def bank(tiny_train_bank):
    return tiny_train_bank  # read-only (tests/conftest.py)


@pytest.fixture(scope="module")
def lidar(bank, tmp_path_factory):
    work = tmp_path_factory.mktemp("generated_cli_lidar") / "lidar"
    config = "configs/generative/hart_lidar.yaml"
    args = [config, "--work-dir", str(work), "--no-progress", "--set", f"data.bank={bank}"]
    assert train_generator([*args, *TINY_HART, *TINY_HART_LIDAR]) == 0
    return work


def test_writes_a_generated_bank_and_prints_its_counts(bank, lidar, tmp_path, capsys):
    out = tmp_path / "generated"
    args = ["generated", "--bank", str(bank), "--out", str(out), "--classes", "car,pedestrian",
            "--lidar-generator", str(lidar), "--per-object", "2", "--seed", "1", "--no-progress"]  # fmt: skip
    capsys.readouterr()
    assert create_data(args) == 0
    printed = capsys.readouterr().out
    real = ObjectBank.open(bank).counts()
    generated = ObjectBank.open(out)
    assert generated.source == "generated"
    assert generated.counts()["car"] == 2 * real["car"]
    assert generated.counts()["pedestrian"] == 2 * real["pedestrian"]
    assert f"car: {2 * real['car']} generated of {2 * real['car']} requested, 0 skipped" in printed
    assert f"wrote generated object bank (lidar generated, camera real) to {out.resolve()}" in (
        printed
    )
    assert generated.generation["generators"]["lidar"]["path"] == str(lidar.resolve())
    assert generated[0].annotation_token == "gen-1-0"
    # the same again is refused, then replaced with --overwrite
    with pytest.raises(SystemExit) as exit_info:
        create_data(args)
    assert exit_info.value.code == 2
    assert "generated exists; pass --overwrite" in capsys.readouterr().err
    assert create_data([*args, "--overwrite", "--per-object", "1", "--with-real"]) == 0
    assert len(ObjectBank.open(out)) == 2 * (real["car"] + real["pedestrian"])
    assert f"with the {real['car'] + real['pedestrian']} real ones" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--bank": "{tmp}/nowhere"}, "nowhere/bank.json: no object bank here"),
        ({"--lidar-generator": "{tmp}/nope"}, "nope: no such generator work dir"),
        ({"--lidar-generator": None}, "give --lidar-generator and/or --camera-generator"),
        ({"--lidar-generator": None, "--camera-generator": "{lidar}"},
         "a lidar generator (data.modality: lidar), not a camera one"),
        ({"--classes": "car,bike"}, "unknown class(es) ['bike']"),
        ({"--per-object": "0"}, "--per-object 0: must be >= 1"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_it(bank, lidar, tmp_path, capsys, change, message):
    options = {"--bank": str(bank), "--out": str(tmp_path / "out"), "--classes": "car",
               "--lidar-generator": str(lidar)}  # fmt: skip
    for key, value in change.items():
        if value is None:
            options.pop(key, None)
        else:
            options[key] = value.format(tmp=tmp_path, lidar=lidar)
    capsys.readouterr()
    argv = ["generated", "--no-progress", *(x for kv in options.items() for x in kv)]
    with pytest.raises(SystemExit) as exit_info:
        create_data(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
