"""The README's Python examples run as written (on the bundled example dataset)."""

import re
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_examples_run_and_agree(tmp_path, monkeypatch):
    blocks = _python_blocks()
    # The last block is a fragment of a larger nipype pipeline (see workflows/nipype/).
    runnable = [block for block in blocks if "workflow.connect" not in block]
    assert len(runnable) == 4
    monkeypatch.chdir(REPO)
    # Keep the examples' caches and reports out of the shared /tmp.
    code = "\n".join(runnable).replace('"/tmp/', f'"{tmp_path}/')
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)

    signals, cleaned = namespace["signals"], namespace["cleaned"]
    assert signals.shape == cleaned.shape
    # NiftiMasker and the core ops called by hand give the same numbers.
    np.testing.assert_allclose(cleaned, signals, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "masker-report.html").stat().st_size > 10_000
    assert namespace["workflow_signals"].shape == (40, 1065)  # fMRIPrep's brain mask
    assert Path(namespace["result"].outputs.cleaned_bold_file).exists()


def test_the_readmes_strategy_file_is_one(tmp_path):
    import json

    from masker_wf.bids.confounds import load_strategy_file, select_confounds, strategy_parameters

    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    path = tmp_path / "mine.json"
    path.write_text(blocks[0])
    overrides = load_strategy_file(path)
    assert overrides["fd_threshold"] == json.loads(blocks[0])["fd_threshold"]
    confounds = (
        REPO / "bids_examples/ds-masker/derivatives/fmriprep/sub-01/func"
        / "sub-01_task-rhymes_run-01_desc-confounds_timeseries.tsv"
    )  # fmt: skip
    strategy = overrides.pop("denoise_strategy")
    selection = select_confounds(confounds, **strategy_parameters(strategy, **overrides))
    assert "trans_x_derivative1" in selection.columns
    assert "white_matter" in selection.columns
