"""Several confound strategies in one invocation: one output set per strategy, shared steps."""

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from app_helpers import FMRIPREP, RUN, assert_sets_consistent, cleaned_data

from masker_wf.cli.run import main

SMOOTHING = ["--smoothing-fwhm", "6", "--detrend"]
# The example runs have 40 volumes: few regressors, so that scrubbing leaves some data.
FEW_REGRESSORS = ["--motion", "basic"]


def _argv(out, work, *strategy):
    return [
        str(FMRIPREP),
        str(out),
        "participant",
        "--participant-label",
        "01",
        "--run-id",
        "1",
        "-w",
        str(work),
        "--no-reports",
        *SMOOTHING,
        *strategy,
    ]


def _job_dirs_holding(work, name):
    return sorted(d for d in work.glob("sub-01/pydra/python-*") if (d / name).exists())


def _sidecar(out, desc):
    return json.loads((out / "sub-01" / "func" / f"{RUN}_desc-{desc}_bold.json").read_text())


def test_two_strategies_write_two_output_sets_sharing_the_smoothing(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    strategies = ["--denoise-strategy", "simple", "scrubbing", *FEW_REGRESSORS]
    assert main(_argv(out, work, *strategies)) == 0

    # One set per strategy, each under its own desc label, each complete and consistent.
    records = assert_sets_consistent(out)
    assert sorted(r["Parameters"]["desc"] for r in records) == [
        "denoisedScrubbing",
        "denoisedSimple",
    ]
    assert _sidecar(out, "denoisedSimple")["DenoiseStrategy"] == "simple"
    assert _sidecar(out, "denoisedScrubbing")["DenoiseStrategy"] == "scrubbing"
    scrubbed = _sidecar(out, "denoisedScrubbing")["ConfoundsParameters"]
    # nilearn's scrubbing preset: FD above 0.2 mm or standardized DVARS above 3.
    assert (scrubbed["fd_threshold"], scrubbed["std_dvars_threshold"]) == (0.2, 3.0)
    assert "StrategyFile" not in _sidecar(out, "denoisedSimple")
    simple = cleaned_data(out, f"{RUN}_desc-denoisedSimple")
    scrubbing = cleaned_data(out, f"{RUN}_desc-denoisedScrubbing")
    assert simple.shape != scrubbing.shape or not np.array_equal(simple, scrubbing)
    # The BOLD was smoothed once: the second strategy's workflow took it from the cache.
    assert len(_job_dirs_holding(work, "smoothed_signals.npy")) == 1
    assert len(_job_dirs_holding(work, "signals.npy")) == 2
    if shutil.which("bids-validator-deno"):
        done = subprocess.run(
            ["bids-validator-deno", "--format", "json", str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        issues = json.loads(done.stdout)["issues"]["issues"]
        assert not [i for i in issues if i["severity"] == "error"]

    # Each set is what an invocation with that strategy alone writes.
    alone = tmp_path / "alone"
    scrubbing_alone = ["--denoise-strategy", "scrubbing", *FEW_REGRESSORS]
    assert main(_argv(alone, tmp_path / "work-alone", *scrubbing_alone)) == 0
    np.testing.assert_array_equal(scrubbing, cleaned_data(alone, f"{RUN}_desc-denoised"))


def test_strategy_files_are_labelled_by_their_names(tmp_path):
    files = []
    for name, strategy in (("motion_only", ["motion"]), ("wmcsf", ["motion", "wm_csf"])):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"strategy": strategy, "motion": "basic"}))
        files.append(path)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = _argv(out, work, "--custom-strategy", str(files[0]), "--custom-strategy", str(files[1]))
    assert main(argv) == 0
    assert _sidecar(out, "denoisedMotiononly")["DenoiseStrategy"] == "custom"
    assert _sidecar(out, "denoisedWmcsf")["DenoiseStrategy"] == "custom"
    # The sidecar says which file, and what it selected (it said only "custom").
    sidecar = _sidecar(out, "denoisedWmcsf")
    assert sidecar["StrategyFile"] == "wmcsf.json"
    assert sidecar["ConfoundsParameters"] == {
        "strategy": ["motion", "wm_csf"],
        "motion": "basic",
        "wm_csf": "basic",
        "demean": True,
    }
    records = assert_sets_consistent(out)
    assert sorted(r["Parameters"]["custom_strategy"] for r in records) == sorted(map(str, files))
    # The group table names each custom set's file.
    assert main([str(FMRIPREP), str(out), "group"]) == 0
    table = pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype=str)
    named = dict(zip(table["desc"], table["strategy_file"], strict=True))
    assert named == {"denoisedMotiononly": "motion_only.json", "denoisedWmcsf": "wmcsf.json"}


def test_presets_named_with_strategy_files_are_cleaned_too(tmp_path):
    # The presets used to be dropped without a word when a file was given.
    path = tmp_path / "motion_only.json"
    path.write_text(json.dumps({"strategy": ["motion"], "motion": "basic"}))
    out, work = tmp_path / "out", tmp_path / "work"
    argv = _argv(out, work, "--denoise-strategy", "simple", "--custom-strategy", str(path))
    assert main(argv) == 0
    assert _sidecar(out, "denoisedSimple")["DenoiseStrategy"] == "simple"
    assert _sidecar(out, "denoisedMotiononly")["DenoiseStrategy"] == "custom"
    assert len(assert_sets_consistent(out)) == 2


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        (["--denoise-strategy", "auto", "simple"], "auto cannot be combined"),
        (["--denoise-strategy", "auto", "--custom-strategy", "x.json"], "auto cannot be combined"),
        (["--denoise-strategy", "simple", "simple"], "give each once"),
    ],
)
def test_strategies_that_cannot_be_told_apart_are_refused(tmp_path, capsys, strategy, message):
    assert main(_argv(tmp_path / "out", tmp_path / "work", *strategy)) == 64
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_subject_page_describes_every_strategy(tmp_path):
    # The page is written after each strategy; the last one used to replace the methods
    # of the others.
    out, work = tmp_path / "out", tmp_path / "work"
    argv = _argv(out, work, "--denoise-strategy", "simple", "scrubbing", *FEW_REGRESSORS)
    argv.remove("--no-reports")
    assert main(argv) == 0
    page = (out / "sub-01.html").read_text()
    methods = page[page.index('<section id="methods">') :]
    for desc in ("denoisedSimple", "denoisedScrubbing"):
        assert f"Outputs labelled desc-{desc}:" in methods
    # One paragraph per strategy, each naming its own.
    simple, scrubbing = methods.split("Outputs labelled desc-")[1:3]
    assert "(simple strategy)" in simple
    assert "scrubbing" not in simple
    assert "(scrubbing strategy)" in scrubbing


def test_one_strategy_file_keeps_its_desc_whatever_its_name(tmp_path):
    # A label is needed only to tell several strategies apart; one file named "_.json"
    # was refused for lacking letters.
    path = tmp_path / "_.json"
    path.write_text(json.dumps({"strategy": ["motion"], "motion": "basic"}))
    out, work = tmp_path / "out", tmp_path / "work"
    assert main(_argv(out, work, "--custom-strategy", str(path))) == 0
    assert _sidecar(out, "denoised")["DenoiseStrategy"] == "custom"


def test_the_subject_page_keeps_the_methods_of_earlier_sets(tmp_path):
    # A later invocation with another strategy used to replace the methods of the sets
    # the page still lists.
    out, work = tmp_path / "out", tmp_path / "work"
    first = _argv(out, work, "--denoise-strategy", "simple", *FEW_REGRESSORS)
    first.remove("--no-reports")
    assert main(first) == 0
    second = _argv(out, work, "--denoise-strategy", "scrubbing", *FEW_REGRESSORS)
    second += ["--output-desc", "scrubbed"]
    second.remove("--no-reports")
    assert main(second) == 0
    methods = (out / "sub-01.html").read_text().split('<section id="methods">')[1]
    assert "Outputs labelled desc-scrubbed:" in methods
    assert "Outputs labelled desc-denoised:" in methods
    assert methods.index("desc-scrubbed") < methods.index("desc-denoised:")


def test_a_strategy_missing_its_inputs_is_refused_before_any_other_runs(tmp_path):
    # ICA-AROMA's outputs are not in the example: given second, it used to be found
    # missing only after the first strategy had written its outputs.
    out, work = tmp_path / "out", tmp_path / "work"
    assert main(_argv(out, work, "--denoise-strategy", "simple", "ica_aroma")) == 66
    assert not list(out.glob("sub-01/func/*_bold.nii.gz"))
    # The dry run refuses it too, whichever position the strategy has.
    for order in (["simple", "ica_aroma"], ["ica_aroma", "simple"]):
        assert main([*_argv(out, work, "--denoise-strategy", *order), "--dry-run"]) == 66


def _without_compcor(tmp_path):
    """A copy of the example whose sub-01 run 1 has no CompCor columns."""
    dataset = tmp_path / "fmriprep"
    shutil.copytree(FMRIPREP, dataset)
    tsv = dataset / "sub-01" / "func" / "sub-01_task-rhymes_run-01_desc-confounds_timeseries.tsv"
    table = pd.read_csv(tsv, sep="\t")
    table.drop(columns=[c for c in table if "comp_cor" in c]).to_csv(tsv, sep="\t", index=False)
    return dataset


def test_a_strategy_failing_on_a_run_is_reported_with_its_desc(tmp_path, capsys):
    # Run 1 of sub-01 lacks the CompCor columns: compcor fails there, simple does not.
    dataset = _without_compcor(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = _argv(out, work, "--denoise-strategy", "compcor", "simple", *FEW_REGRESSORS)
    argv[0] = str(dataset)
    argv.remove("--no-reports")
    assert main(argv) == 1
    err = capsys.readouterr().err
    # The last lines count every output set, and name the failed one by its desc.
    assert "1/2 output sets (2 strategies) succeeded" in err
    assert f"FAILED {RUN}_desc-preproc_bold (desc-denoisedCompcor):" in err
    # The subject page, written once, lists the failure of the first strategy.
    page = (out / "sub-01.html").read_text()
    assert f"{RUN}_desc-preproc_bold (desc-denoisedCompcor)" in page
    log = json.loads((out / "logs" / "failures_sub-01.json").read_text())
    assert [(e["desc"], e["denoise_strategy"]) for e in log] == [("denoisedCompcor", "compcor")]
    assert main([str(dataset), str(out), "group"]) == 0
    table = pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype=str)
    rows = table[["desc", "denoise_strategy", "status"]].sort_values("desc").values.tolist()
    assert rows == [["denoisedCompcor", "compcor", "failed"], ["denoisedSimple", "simple", "ok"]]
    # The group page counts output sets and names the failed one by its desc too.
    index = (out / "index.html").read_text()
    assert "2 output sets (2 desc labels: a set per run and strategy) of 1 subjects" in index
    assert "task-rhymes_run-01_space-MNI152NLin2009cAsym_desc-denoisedCompcor<" in index


def test_the_subject_page_keeps_a_failed_set_of_an_earlier_invocation(tmp_path):
    # compcor fails on run 1 (no CompCor columns); a later invocation with another
    # strategy (another desc) used to rebuild the page from its own results only.
    dataset = _without_compcor(tmp_path)
    out, work = tmp_path / "out", tmp_path / "work"
    first = _argv(out, work, "--denoise-strategy", "compcor", "simple", *FEW_REGRESSORS)
    first[0] = str(dataset)
    first.remove("--no-reports")
    assert main(first) == 1
    later = _argv(out, work, "--denoise-strategy", "simple", "--output-desc", "later")
    later[0] = str(dataset)
    later.remove("--no-reports")
    assert main(later) == 0
    page = (out / "sub-01.html").read_text()
    assert f"{RUN}_desc-preproc_bold (desc-denoisedCompcor)" in page
    assert page.count(f"{RUN}_desc-preproc_bold (desc-") == 1  # listed once, the success not
    # Once that set succeeds, it leaves the page.
    fixed = _argv(out, work, "--denoise-strategy", "simple", "--output-desc", "denoisedCompcor")
    fixed[0] = str(dataset)
    fixed.remove("--no-reports")
    assert main(fixed) == 0
    assert "desc-denoisedCompcor)" not in (out / "sub-01.html").read_text()


def test_dry_run_names_every_strategy_and_its_desc(tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = _argv(out, work, "--denoise-strategy", "simple", "scrubbing", *FEW_REGRESSORS)
    assert main([*argv, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "'simple' (desc-denoisedSimple)" in printed
    assert "'scrubbing' (desc-denoisedScrubbing)" in printed
    assert not out.exists()
    # A SLURM submission is sized for every strategy of each run.
    assert main([*argv, "--dry-run", "--slurm"]) == 0
    assert "1 run(s) (2 strategies each) of 1 participant(s)" in capsys.readouterr().out
    assert not out.exists()


def test_an_unknown_component_in_a_strategy_file_names_the_file(tmp_path, capsys):
    path = tmp_path / "typo.json"
    path.write_text(json.dumps({"strategy": ["motoin"]}))
    out = tmp_path / "out"
    assert main(_argv(out, tmp_path / "work", "--custom-strategy", str(path))) == 65
    assert f"strategy file '{path}'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"strategy": null}', "'strategy' must be a list of names"),
        (b'{"strategy": "motion"}', "'strategy' must be a list of names"),
        (b'{"strategy": ["motion"], "columns": "csf"}', "'columns' must be a list of names"),
        (b'{"parameters": [1, 2]}', "'parameters' must be a JSON object"),
        (b'\xff\xfe{"strategy": ["motion"]}', "cannot be read as JSON"),
    ],
)
def test_a_malformed_strategy_file_is_refused_naming_it(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"strategy": ["motion"], "motion": "basic"}))
    out = tmp_path / "out"
    argv = _argv(out, tmp_path / "work", "--custom-strategy", str(path), str(good))
    assert main([*argv, "--dry-run"]) == 65
    err = capsys.readouterr().err
    assert f"strategy file '{path}'" in err
    assert message in err
    assert not out.exists()


def test_a_directory_given_as_strategy_file_is_not_called_missing(tmp_path, capsys):
    path = tmp_path / "dir.json"
    path.mkdir()
    assert main(_argv(tmp_path / "out", tmp_path / "work", "--custom-strategy", str(path))) == 66
    assert f"input file '{path}' is not a file" in capsys.readouterr().err


def test_the_group_table_tells_the_strategies_apart(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    strategies = ["--denoise-strategy", "simple", "scrubbing", *FEW_REGRESSORS]
    assert main(_argv(out, work, *strategies)) == 0
    assert main([str(FMRIPREP), str(out), "group"]) == 0

    table = pd.read_csv(out / "group" / "summary.tsv", sep="\t", dtype=str)
    rows = table[["run", "desc", "denoise_strategy"]].sort_values("desc")
    assert rows.values.tolist() == [
        ["01", "denoisedScrubbing", "scrubbing"],
        ["01", "denoisedSimple", "simple"],
    ]
    # Scrubbing keeps fewer volumes: the rows are the sets' own numbers.
    kept = dict(zip(table["desc"], table["volumes_kept"].astype(int), strict=True))
    assert kept["denoisedScrubbing"] < kept["denoisedSimple"]
    described = json.loads((out / "group" / "summary.json").read_text())
    # Every column of the table is described in its sidecar, as BIDS asks of a TSV.
    assert set(table.columns) <= set(described)


def test_replacing_a_set_of_another_strategy_says_so(tmp_path, capsys):
    out, work = tmp_path / "out", tmp_path / "work"
    assert main(_argv(out, work, "--denoise-strategy", "scrubbing", *FEW_REGRESSORS)) == 0
    assert "warning: replacing" not in capsys.readouterr().err
    assert main(_argv(out, work, "--denoise-strategy", "simple", *FEW_REGRESSORS)) == 0
    err = capsys.readouterr().err
    assert (
        "warning: replacing the desc-denoised outputs cleaned with strategy 'scrubbing' by "
        "strategy 'simple'; --output-desc" in err
    )
    assert _sidecar(out, "denoised")["DenoiseStrategy"] == "simple"
    # The same strategy with other options replaces its set without a word.
    assert main(_argv(out, work, "--denoise-strategy", "simple", "--motion", "full")) == 0
    assert "warning: replacing" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "options", "message"),
    [
        (
            {"strategy": ["motion", "global_signal"], "motion": "basic"},
            ["--fd-threshold", "0.5"],
            "--fd-threshold acts on the 'scrub' component, which the file's strategy",
        ),
        (
            {"strategy": ["motion", "scrub"], "motion": "basic", "fd_threshold": 0.3},
            ["--fd-threshold", "0.5"],
            "--fd-threshold 0.5 and the file's fd_threshold 0.3 disagree",
        ),
        (
            {"strategy": ["motion", "global_signal"], "global_signal": "basic"},
            ["--global-signal", "full"],
            "--global-signal 'full' and the file's global_signal 'basic' disagree",
        ),
    ],
)
def test_options_a_strategy_file_would_drop_or_lose_are_refused(
    tmp_path, capsys, content, options, message
):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(content))
    out = tmp_path / "out"
    argv = _argv(out, tmp_path / "work", "--custom-strategy", str(path), *options)
    assert main(argv) == 64
    err = capsys.readouterr().err
    assert f"strategy file '{path}'" in err
    assert message in err
    assert not out.exists()


def test_an_option_of_a_component_the_file_has_applies(tmp_path):
    path = tmp_path / "scrub.json"
    path.write_text(json.dumps({"strategy": ["motion", "scrub"], "motion": "basic"}))
    out = tmp_path / "out"
    argv = _argv(out, tmp_path / "work", "--custom-strategy", str(path), "--fd-threshold", "0.4")
    assert main(argv) == 0
    (record,) = assert_sets_consistent(out)
    assert record["Parameters"]["confounds"]["fd_threshold"] == 0.4


def test_the_report_names_fmripreps_cosine_regressors_as_the_high_pass(tmp_path):
    # The simple strategy has the high_pass component: the report said "temporal filter
    # none" beside the cosine columns of the design.
    out, work = tmp_path / "out", tmp_path / "work"
    argv = _argv(out, work, "--denoise-strategy", "simple")
    argv.remove("--no-reports")
    assert main(argv) == 0
    report = next((out / "sub-01" / "figures").glob("*_report.html")).read_text()
    assert "high-pass by fMRIPrep&#39;s cosine regressors" in report
