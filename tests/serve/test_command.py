import socket

from pirecon.cli import main


def test_help_lists_flags_and_presets(capsys):
    assert main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    for text in ("--serve.obs_map", "images/cam_high", "observation/joint_position", "--port INT  (default: 8000)", "Ctrl-C"):
        assert text in out


def test_missing_checkpoint_and_unknown_preset_are_named(capsys):
    assert main(["serve"]) == 2
    assert "--policy.path: expected a checkpoint folder" in capsys.readouterr().err
    assert main(["serve", "--policy.path=nowhere", "--serve.preset=bridge"]) == 2
    assert "--serve.preset='bridge': expected one of ['aloha', 'droid', 'libero']" in capsys.readouterr().err
    assert main(["serve", "--policy.path=nowhere", "--serve.obs_map=[1]"]) == 2
    assert "--serve.obs_map" in capsys.readouterr().err


def test_a_map_that_misses_the_checkpoints_cameras_fails_before_listening(trained_checkpoint, capsys):
    # The simulator checkpoint reads cameras top and wrist; LIBERO's defaults are image and image2.
    assert main(["serve", f"--policy.path={trained_checkpoint}", "--serve.preset=libero", "--port=0"]) == 2
    err = capsys.readouterr().err
    assert "request key 'observation/image' maps to 'observation.images.image'" in err
    assert "['observation.images.top', 'observation.images.wrist']" in err


def test_a_taken_port_is_reported(trained_checkpoint, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", f"--policy.path={trained_checkpoint}", "--host", "127.0.0.1", "--port", str(port)]) == 2
    assert f"--host=127.0.0.1 --port={port}: cannot listen" in capsys.readouterr().err


def test_listens_on_loopback_unless_told_and_says_so_when_exposed(monkeypatch):
    from pirecon.configs.parse import parse_flags
    from pirecon.configs.serve import ServeConfig
    from pirecon.serve.command import api_key, exposure_note

    monkeypatch.delenv("PIRECON_SERVE_API_KEY", raising=False)
    local = parse_flags(["--policy.path=x"], ServeConfig)
    assert local.host == "127.0.0.1" and exposure_note(local) is None and api_key(local) is None
    exposed = parse_flags(["--policy.path=x", "--host", "0.0.0.0"], ServeConfig)
    assert "--host=0.0.0.0 listens beyond this machine, WITHOUT authentication" in exposure_note(exposed)
    keyed = parse_flags(["--policy.path=x", "--host=0.0.0.0", "--serve.api_key=k1"], ServeConfig)
    assert api_key(keyed) == "k1" and "clients need the API key" in exposure_note(keyed)
    monkeypatch.setenv("PIRECON_SERVE_API_KEY", "from-env")
    assert api_key(exposed) == "from-env" and api_key(keyed) == "k1"  # the flag wins
    assert "clients need the API key" in exposure_note(exposed)


def test_the_real_time_chunking_mode_is_checked_and_announced(capsys):
    from pirecon.configs.parse import parse_flags
    from pirecon.configs.serve import ServeConfig
    from pirecon.serve.command import rtc_note

    assert main(["serve", "--policy.path=nowhere", "--policy.rtc_mode=prefix"]) == 2
    assert "--policy.rtc_mode='prefix': expected one of ['guided', 'trained']" in capsys.readouterr().err
    guided = parse_flags(["--policy.path=x"], ServeConfig)
    assert rtc_note(guided, 0) == "pirecon serve: real-time chunking (requests with prev_actions) in guided mode"
    assert "rtc_training_max_delay=3: --policy.rtc_mode=trained needs no guidance" in rtc_note(guided, 3)
    trained = parse_flags(["--policy.path=x", "--policy.rtc_mode=trained"], ServeConfig)
    assert "in trained mode: the first inference_delay <= 3 actions are given clean, no guidance" in \
        rtc_note(trained, 3)
