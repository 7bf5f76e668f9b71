"""The App's options: flags generated from the parameter spec, config files typed like the
command line, the validator at the door, frozen settings, the explicit array-task option."""

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from masker_wf import _spec
from masker_wf._validation import check_parameters
from masker_wf.app.settings import Settings
from masker_wf.cli.parser import build_parser, parse_options
from masker_wf.cli.run import main

REPO = Path(__file__).resolve().parent.parent
FMRIPREP = REPO / "bids_examples" / "ds-masker" / "derivatives" / "fmriprep"
SPACE = "MNI152NLin2009cAsym"


def _write_config(tmp_path, text, name="config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_config_file_scalars_are_typed_like_the_command_line(tmp_path):
    positionals = [str(FMRIPREP), str(tmp_path / "out"), "participant"]
    config = _write_config(
        tmp_path,
        f'space = "{SPACE}"\nparticipant_label = "01"\nrun-id = 1\nsmoothing_fwhm = 6\n'
        "target_shape = [4, 5, 6]\nstandardize = false\n"
        '[masker]\nclean_args = {filter = "cosine"}\n',
    )
    from_config = parse_options([*positionals, "--config-file", str(config)])
    from_flags = parse_options(
        [
            *positionals,
            "--space",
            SPACE,
            "--participant-label",
            "01",
            "--run-id",
            "1",
            "--smoothing-fwhm",
            "6",
            "--target-shape",
            "4",
            "5",
            "6",
            "--standardize",
            "none",
            "--clean-args",
            '{"filter": "cosine"}',
        ]
    )
    for key in (
        "space",
        "participant_label",
        "run_id",
        "smoothing_fwhm",
        "target_shape",
        "standardize",
        "clean_args",
    ):
        assert from_config[key] == from_flags[key], key
        assert type(from_config[key]) is type(from_flags[key]), key
    assert from_config["space"] == [SPACE]  # a one-item list, not ['M', 'N', 'I', ...]
    assert from_config["standardize"] is False
    # The command line wins over the config file.
    again = parse_options([*positionals, "--config-file", str(config), "--space", "T1w"])
    assert again["space"] == ["T1w"]


def test_config_file_scalar_space_selects_the_runs(tmp_path):
    config = _write_config(tmp_path, f'space = "{SPACE}"\nparticipant_label = "01"\n')
    out = tmp_path / "out"
    argv = [str(FMRIPREP), str(out), "participant", "--config-file", str(config)]
    argv += ["--run-id", "1", "-w", str(tmp_path / "w"), "--no-reports"]
    assert main(argv) == 0
    produced = sorted(p.name for p in out.glob("sub-*/func/*_bold.nii.gz"))
    assert produced == [f"sub-01_task-rhymes_run-01_space-{SPACE}_desc-denoised_bold.nii.gz"]


def test_config_file_value_of_the_wrong_type_is_a_usage_error(tmp_path, capsys):
    config = _write_config(tmp_path, 'smoothing_fwhm = "wide"\n')
    out = tmp_path / "out"
    argv = [str(FMRIPREP), str(out), "participant", "--config-file", str(config)]
    assert main(argv) == 64
    err = capsys.readouterr().err
    assert f"--config-file '{config}'" in err
    assert "--smoothing-fwhm" in err
    assert not out.exists()


def test_bad_masker_parameter_exits_64_with_the_validators_message(tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(FMRIPREP), str(out), "participant", "-w", str(work)]
    assert main([*argv, "--high-pass", "0.1", "--low-pass", "0.08"]) == 64
    with pytest.raises(ValueError, match="must be lower than") as info:
        check_parameters({"high_pass": 0.1, "low_pass": 0.08}, t_r_from_data=True)
    assert capsys.readouterr().err == f"masker-wf: error: {info.value}\n"
    # Refused at the door: neither the output nor the work directory was created.
    assert not out.exists()
    assert not work.exists()
    # A filter without t_r is left to each run's sidecar; with --t-r the band is checked too.
    assert main([*argv, "--high-pass", "0.1", "--low-pass", "0.08", "--t-r", "2"]) == 64
    assert "must be lower than" in capsys.readouterr().err
    assert not out.exists()


def test_masker_flags_are_generated_from_the_spec():
    parser = build_parser()
    cli = _spec.for_face("cli")
    assert {p.name for p in cli} <= set(parser.options)
    for parameter in cli:
        action = parser.options[parameter.name]
        assert parameter.flag in action.option_strings
        assert action.help.startswith(parameter.doc.replace("%", "%%"))
        assert parser.option_defaults[parameter.name] == parameter.default
        if parameter.cli_metavar is not None:
            assert action.metavar == parameter.cli_metavar
        if parameter.choices is not None:
            strings = [c for c in parameter.choices if isinstance(c, str)]
            assert list(action.choices)[: len(strings)] == strings
        if parameter.type == "bool":
            assert isinstance(action, argparse.BooleanOptionalAction)
    # Every default comes out of a parse as the spec's value.
    options = parse_options(["bids", "out", "participant"])
    assert {p.name: options[p.name] for p in cli} == {p.name: p.default for p in cli}


def test_settings_are_frozen_and_hold_exactly_the_cli_parameters(tmp_path):
    options = parse_options([str(FMRIPREP), str(tmp_path / "o"), "participant", "--detrend"])
    settings = Settings.from_options(options)
    assert list(settings.masker) == [p.name for p in _spec.for_face("cli")]
    assert settings.masker["detrend"] is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.output_dir = Path("elsewhere")
    with pytest.raises(TypeError):
        settings.masker["detrend"] = False
    assert "detrend" in settings.given
    assert "smoothing_fwhm" not in settings.given


def test_array_task_option_leaves_dataset_files_to_the_submitter(tmp_path):
    out = tmp_path / "out"
    argv = [str(FMRIPREP), str(out), "participant", "--participant-label", "01"]
    argv += ["--run-id", "1", "-w", str(tmp_path / "w"), "--no-reports", "--array-task"]
    assert main(argv) == 0
    assert not (out / "dataset_description.json").exists()
    assert not (out / ".bidsignore").exists()
    assert list(out.glob("sub-01/func/*_desc-denoised_bold.nii.gz"))
    # A task never submits again, even when a config file asks for SLURM.
    config = _write_config(tmp_path, "slurm = true\n")
    assert main([*argv, "--config-file", str(config)]) == 1


def test_options_are_recorded_in_the_logs(tmp_path):
    out = tmp_path / "out"
    argv = [str(FMRIPREP), str(out), "participant", "--participant-label", "01"]
    argv += ["--run-id", "1", "-w", str(tmp_path / "w"), "--no-reports", "--space", SPACE]
    assert main(argv) == 0
    (log,) = (out / "logs").glob("masker-wf_*.json")
    recorded = json.loads(log.read_text())
    assert recorded["space"] == [SPACE]
    assert recorded["smoothing_fwhm"] is None
    assert recorded["analysis_level"] == "participant"


def test_an_option_off_by_default_says_so_as_it_is_spelled():
    # "--standardize False" is refused (the choice is 'none'): the help said "(default: False)".
    helps = {action.dest: action.help for action in build_parser().options.values()}
    assert helps["standardize"].endswith("(default: none)")
    assert "(default: False)" not in helps["standardize"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--fd-threshold", "nan"], "fd_threshold must be a positive number, got nan"),
        (["--fd-threshold", "-1"], "fd_threshold must be a positive number, got -1.0"),
        (["--std-dvars-threshold", "0"], "std_dvars_threshold must be a positive number"),
        (["--scrub", "-3"], "scrub (the shortest segment kept between outliers, in volumes)"),
    ],
)
def test_scrubbing_thresholds_are_checked_at_the_door(tmp_path, capsys, options, message):
    # NaN used to run the whole workflow and fail writing a sidecar; a negative threshold
    # failed every run ("every volume would be censored"); a negative scrub was used.
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(FMRIPREP), str(out), "participant", "-w", str(work), "--no-reports"]
    assert main([*argv, "--denoise-strategy", "scrubbing", *options]) == 64
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert not work.exists()


def test_a_strategy_files_whole_float_scrub_is_a_count(tmp_path):
    strategy = tmp_path / "mine.json"
    strategy.write_text(json.dumps({"strategy": ["motion", "scrub"], "scrub": 5.0}))
    out = tmp_path / "out"
    argv = [str(FMRIPREP), str(out), "participant", "-w", str(tmp_path / "w"), "--no-reports"]
    argv += ["--participant-label", "01", "--run-id", "01", "--motion", "basic"]
    assert main([*argv, "--custom-strategy", str(strategy)]) == 0
    sidecar = json.loads(next(out.glob("sub-01/func/*_bold.json")).read_text())
    assert sidecar["ConfoundsParameters"]["scrub"] == 5


@pytest.mark.parametrize("scrub", [2.5, True, -3])
def test_a_strategy_files_scrub_must_be_a_count(tmp_path, capsys, scrub):
    strategy = tmp_path / "mine.json"
    strategy.write_text(json.dumps({"strategy": ["motion", "scrub"], "scrub": scrub}))
    out = tmp_path / "out"
    argv = [str(FMRIPREP), str(out), "participant", "-w", str(tmp_path / "w")]
    assert main([*argv, "--custom-strategy", str(strategy)]) == 65
    err = capsys.readouterr().err
    assert f"strategy file '{strategy}'" in err
    assert f"must be a non-negative int, got {scrub!r}" in err
    assert not out.exists()


def test_a_directory_given_as_config_file_is_not_called_missing(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [str(FMRIPREP), str(out), "participant", "--config-file", str(tmp_path)]
    assert main(argv) == 65
    assert f"--config-file '{tmp_path}' is not a file." in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value", "what"),
    [
        ("--space", "", "space"),
        ("--participant-label", "", "participant"),
        ("--participant-label", "sub-", "participant"),
        ("--session-id", "ses-a_b", "session"),
        ("--task-id", "rhymes task", "task"),
        ("--run-id", "run-", "run"),
    ],
)
def test_an_empty_or_malformed_label_is_a_usage_error(tmp_path, capsys, flag, value, what):
    # These selected nothing and ended as "nothing to process" (exit 18), after indexing.
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(FMRIPREP), str(out), "participant", "-w", str(work), flag, value]
    assert main(argv) == 64
    err = capsys.readouterr().err
    assert f"expected a {what} label (letters and digits" in err
    assert repr(value) in err
    assert not out.exists()
    assert not work.exists()
    # The same value from a config file is refused alike.
    key = flag.removeprefix("--").replace("-", "_")
    config = _write_config(tmp_path, f"{key} = {json.dumps(value)}\n")
    assert main([*argv[:5], "--config-file", str(config)]) == 64
    assert f"expected a {what} label" in capsys.readouterr().err


def test_labels_are_taken_with_or_without_their_prefix():
    labels = ["--participant-label", "sub-01", "02", "--run-id", "run-1"]
    spaces = ["--space", f"space-{SPACE}", "T1w"]
    options = parse_options([str(FMRIPREP), "out", "participant", *labels, *spaces])
    assert options["participant_label"] == ["sub-01", "02"]
    assert options["run_id"] == ["run-1"]
    assert options["space"] == [f"space-{SPACE}", "T1w"]
