import numpy as np
import pytest

from pirecon.errors import ConfigError, InputError
from pirecon.serve.obs_map import (PRESETS, ObsMapper, example_request, lookup, resolve_obs_map)

SIM_CAMERAS = ["observation.images.top", "observation.images.wrist"]


def libero_on_sim(**kwargs) -> ObsMapper:
    """openpi's LIBERO client keys retargeted onto the built-in simulator's dataset keys."""
    obs_map = resolve_obs_map("libero", {"observation/image": "top", "observation/wrist_image": "wrist"}, SIM_CAMERAS)
    return ObsMapper(obs_map, camera_keys=SIM_CAMERAS, state_dim=3, **kwargs)


def test_lookup_reads_flat_slash_keys_and_nested_dicts():
    request = {"observation/image": 1, "images": {"cam_high": 2, "a/b": {"c": 3}}, "x/y": {"z": 4}}
    assert lookup(request, "observation/image") == 1
    assert lookup(request, "images/cam_high") == 2
    assert lookup(request, "images/a/b/c") == 3
    assert lookup(request, "x/y/z") == 4
    with pytest.raises(KeyError):
        lookup(request, "images/cam_low")


def test_libero_request_maps_to_dataset_keys():
    mapper = libero_on_sim()
    request = example_request("libero", state_dims={"observation/state": 3})
    obs = mapper(request)
    assert set(obs) == {*SIM_CAMERAS, "observation.state", "task"}
    top = obs["observation.images.top"]
    assert top.shape == (3, 224, 224) and top.dtype == np.uint8 and top.flags.writeable
    np.testing.assert_array_equal(top, request["observation/image"].transpose(2, 0, 1))
    np.testing.assert_array_equal(obs["observation.state"], request["observation/state"])
    assert obs["observation.state"].dtype == np.float32
    assert obs["task"] == "pick up the red block"


def test_aloha_nested_images_channels_first_or_last_give_the_same_observation():
    cams = [PRESETS["aloha"].obs_map[f"images/{c}"]
            for c in ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist")]
    mapper = ObsMapper(resolve_obs_map("aloha", {}, cams), camera_keys=cams, state_dim=14)
    chw = example_request("aloha", seed=1)
    assert chw["images"]["cam_high"].shape == (3, 224, 224)  # what openpi's ALOHA client sends
    hwc = {**chw, "images": {k: v.transpose(1, 2, 0) for k, v in chw["images"].items()}}
    a, b = mapper(chw), mapper(hwc)
    for key in cams:
        np.testing.assert_array_equal(a[key], b[key])
        assert a[key].shape == (3, 224, 224)
    np.testing.assert_array_equal(a["observation.state"], chw["state"])


def test_droid_joins_joint_and_gripper_positions_in_order():
    cams = ["observation.images.exterior_image_1_left", "observation.images.wrist_image_left"]
    mapper = ObsMapper(resolve_obs_map("droid", {}, cams), camera_keys=cams, state_dim=8)
    request = example_request("droid")
    state = mapper(request)["observation.state"]
    np.testing.assert_array_equal(state, np.concatenate([request["observation/joint_position"],
                                                         request["observation/gripper_position"]]))
    request["observation/gripper_position"] = np.zeros(2, np.float32)
    with pytest.raises(InputError, match=r"'observation/joint_position' \(7\) \+ 'observation/gripper_position' "
                                         r"\(2\) make 9 dims; the checkpoint expects observation.state with 8"):
        mapper(request)


def test_without_preset_clients_send_dataset_keys():
    obs_map = resolve_obs_map(None, {}, SIM_CAMERAS)
    assert obs_map == {**{c: c for c in SIM_CAMERAS}, "observation.state": "observation.state", "prompt": "task"}


def test_null_drops_a_preset_key_and_typos_are_named():
    obs_map = resolve_obs_map("aloha", {"images/cam_low": None, "images/cam_right_wrist": ""}, None)
    assert "images/cam_low" not in obs_map and "images/cam_right_wrist" not in obs_map
    with pytest.raises(ConfigError, match="'images/cam_lo'.*no 'images/cam_lo'"):
        resolve_obs_map("aloha", {"images/cam_lo": None}, None)
    with pytest.raises(ConfigError, match="--serve.preset='bridge'.*aloha"):
        resolve_obs_map("bridge", {}, None)


@pytest.mark.parametrize("overrides, fragment", [
    ({}, "request key 'observation/image' maps to 'observation.images.image'.*camera keys "
         r"\['observation.images.top', 'observation.images.wrist'\] \(e.g. --serve.obs_map='\{\"observation/image\": "
         r"\"observation.images.top\"\}'\)"),
    ({"observation/image": "top"}, "'observation/wrist_image' maps to 'observation.images.image2'.*"
                                   r"--serve.obs_map='\{\"observation/wrist_image\": \"observation.images.wrist\"\}'"),
    ({"observation/image": "top", "observation/wrist_image": None},
     r"no request key maps to the checkpoint's camera\(s\) \['observation.images.wrist'\]"),
    ({"observation/image": "top", "observation/wrist_image": "top"}, "both 'observation/image' and "
                                                                     "'observation/wrist_image' map to camera"),
    ({"observation/image": "top", "observation/wrist_image": "wrist", "observation/state": None},
     "no request key maps to 'observation.state'"),
    ({"observation/image": "top", "observation/wrist_image": "wrist", "prompt": None},
     "no request key maps to 'task'.*--serve.default_prompt"),
    ({"observation/image": "top", "observation/wrist_image": "wrist", "extra": "prompt"}, "both 'prompt' and 'extra'"),
])
def test_map_mistakes_are_config_errors_at_start_up(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ObsMapper(resolve_obs_map("libero", overrides, SIM_CAMERAS), camera_keys=SIM_CAMERAS, state_dim=3)


def _libero_request(**changes):
    request = example_request("libero", state_dims={"observation/state": 3})
    for key, value in changes.items():
        key = key.replace("__", "/")
        if value is None:
            del request[key]
        else:
            request[key] = value
    return request


@pytest.mark.parametrize("request_, fragment", [
    (_libero_request(observation__wrist_image=None), "the request has no 'observation/wrist_image' \\(mapped to "
                                                     "'observation.images.wrist'\\); its keys are"),
    (_libero_request(prompt=None), "no 'prompt'"),
    (_libero_request(observation__image=np.zeros((224, 224, 3), np.float32)), "'observation/image' has dtype float32; "
                                                                              "expected uint8"),
    (_libero_request(observation__image=np.zeros((224, 224), np.uint8)), r"'observation/image' has shape \(224, 224\)"),
    (_libero_request(observation__image=np.zeros((5, 224, 224), np.uint8)), r"shape \(5, 224, 224\)"),
    (_libero_request(observation__image=[[1, 2, 3]]), "'observation/image' is a list"),
    (_libero_request(observation__state=np.zeros(8, np.float32)),
     r"'observation/state' has shape \(8,\); the checkpoint expects observation.state with 3 dims"),
    (_libero_request(observation__state=np.zeros((1, 3), np.float32)), r"'observation/state' has shape \(1, 3\)"),
    (_libero_request(observation__state=np.array(["a", "b", "c"])), "'observation/state' has dtype <U1"),
    (_libero_request(observation__state=np.array([0.0, np.nan, 1.0])), "NaN"),
    (_libero_request(prompt=3), "'prompt' is a int; expected the instruction as a string"),
])
def test_request_mistakes_name_the_key(request_, fragment):
    with pytest.raises(InputError, match=fragment):
        libero_on_sim()(request_)


def test_request_must_be_a_map():
    with pytest.raises(InputError, match="msgpack map.*list"):
        libero_on_sim()([1, 2])


def test_default_prompt_fills_in():
    mapper = libero_on_sim(default_prompt="reach the block")
    assert mapper(_libero_request(prompt=None))["task"] == "reach the block"
    assert mapper(_libero_request(prompt=b"place it"))["task"] == "place it"
    state_list = mapper(_libero_request(observation__state=[1, 2, 3]))["observation.state"]
    assert state_list.dtype == np.float32 and state_list.tolist() == [1.0, 2.0, 3.0]
