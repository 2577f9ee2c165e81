import pytest

from perception.config import ConfigError, load_config, parse_config, save_config


def test_defaults_validate():
    config = parse_config({})
    assert config.data.sweeps == 10


def test_overrides_are_typed():
    config = parse_config({}, ["data.sweeps=3", "augment.image.final_size=[352, 128]", "seed=7"])
    assert config.data.sweeps == 3
    assert config.augment.image.final_size == (352, 128)
    assert config.seed == 7


@pytest.mark.parametrize(
    ("raw", "overrides", "message"),
    [
        ({"data": {"sweepz": 3}}, [], "data.sweepz: unknown key"),
        ({"data": {"sweeps": "many"}}, [], "data.sweeps: Input should be a valid integer"),
        ({}, ["data.sweeps=0"], "data.sweeps: Input should be greater than 0"),
        ({}, ["augment.lidar.flip_x_prob=2"], "augment.lidar.flip_x_prob"),
        ({}, ["data.sweeps"], "expected key.path=value"),
        ({"seed": 3}, ["seed.x=1"], "seed is a value, not a section"),
        ({"data": {"cameras": ["CAM_TOP"]}}, [], "unknown camera"),
        ({"model": {"lidar": None}}, ["model.fuser_zero_init=[lidar]"], "model.lidar is null"),
        ({}, ["model.fuser_zero_init=[camera, lidar]"], "zeroes every modality"),
        ({}, ["model.fuser_zero_init=[radar]"], "model.fuser_zero_init"),
        (
            {"model": {"lidar": None}},
            ["model.camera.lidar_depth_input=true"],
            "lidar_depth_input needs LiDAR",
        ),
        ({}, ["model.camera.lidar_depth_prior=4"], "lidar_depth_prior is a prior"),
        ({}, ["model.camera.lidar_depth_prior=-1"], "model.camera.lidar_depth_prior"),
        ({}, ["augment.image.scale_lim=[1.2, 0.9]"], "scale_lim must be \\(low, high\\)"),
        ({}, ["augment.image.scale_lim=[0, 1]"], "scale_lim must be positive"),
        ({}, ["augment.image.bottom_crop_lim=[0, 1]"], "bottom_crop_lim must lie in"),
        ({}, ["augment.image.min_horizon_keep=1.5"], "augment.image.min_horizon_keep"),
        ({}, ["augment.image.test_scale=0"], "augment.image.test_scale"),
    ],
)
def test_errors_name_the_key(raw, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        parse_config(raw, overrides, source="cfg.yaml")


def test_yaml_is_data_not_code(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_save_and_reload_round_trip(tmp_path):
    config = parse_config({"name": "x"}, ["data.clip_frames=3"])
    path = save_config(config, tmp_path / "resolved.yaml")
    assert load_config(path) == config


def test_every_shipped_config_validates():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.yaml"))
    assert configs, "configs/ holds no YAML"
    for path in configs:
        load_config(path)


def test_bare_off_means_tsm_off():
    # YAML 1.1 reads a bare `off` as false; the TSM mode takes it as "off", and only that
    assert parse_config({}, ["model.camera.tsm_mode=off"]).model.camera.tsm_mode == "off"
    assert parse_config({"model": {"camera": {"tsm_mode": False}}}).model.camera.tsm_mode == "off"
    with pytest.raises(ConfigError, match="model.camera.tsm_mode"):
        parse_config({}, ["model.camera.tsm_mode=on"])
