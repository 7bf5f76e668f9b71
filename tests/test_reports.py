"""Reports: content of the per-run and per-subject pages, and rendering in a real browser."""

import base64
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from masker_wf.reports import (
    build_run_report,
    build_subject_report,
    methods_paragraph,
    temporal_snr,
)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _png_sizes(document: str) -> list[tuple[int, int]]:
    """Width and height of every embedded PNG (read from its IHDR chunk)."""
    sizes = []
    for payload in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", document):
        raw = base64.b64decode(payload)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        sizes.append((int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")))
    return sizes


@pytest.fixture(scope="module")
def real_run(ds003_path, ds003_mask_path):
    """Masked signals of nipype's real BOLD before and after a simple cleaning."""
    bold = np.asarray(nib.load(ds003_path).dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(ds003_mask_path).dataobj) > 0
    before = bold[mask].T
    kept = np.setdiff1d(np.arange(before.shape[0]), [5, 11])
    residual = before[kept] - before[kept].mean(axis=0)
    after = residual / residual.std(axis=0, ddof=1)
    return {
        "mask": mask,
        "mean": bold.mean(axis=3),
        "before": before,
        "after": after,
        "kept": kept,
        "tsnr_before": temporal_snr(before),
        "tsnr_after": temporal_snr(before[kept], residual.std(axis=0)),
    }


def test_run_report_has_every_figure_and_the_numbers(real_run):
    fd = np.linspace(0, 0.8, real_run["before"].shape[0])
    report = build_run_report(
        title="sub-01_task-rest_bold",
        mask=real_run["mask"],
        mean_data=real_run["mean"],
        parameters={"smoothing_fwhm": 6.0, "low_pass": 0.08, "t_r": 2.0},
        signals_before=real_run["before"],
        signals_after=real_run["after"],
        t_r=2.0,
        kept_volumes=real_run["kept"],
        framewise_displacement=fd,
        fd_threshold=0.5,
        tsnr_before=real_run["tsnr_before"],
        tsnr_after=real_run["tsnr_after"],
        warnings=["confounds had NaN in the first row"],
    )
    document = report.get_html()
    # mask view, carpet plots, FD, tSNR maps: four real, non-empty PNG figures
    sizes = _png_sizes(document)
    assert len(sizes) == 4
    assert all(width > 100 and height > 50 for width, height in sizes)
    n_voxels = int(real_run["mask"].sum())
    assert f"<th>voxels in mask</th><td><code>{n_voxels}</code>" in document
    assert "<th>volumes kept</th><td><code>18</code>" in document
    assert "<th>volumes in input</th><td><code>20</code>" in document
    median_before = float(np.median(real_run["tsnr_before"]))
    assert f"{median_before:.6g}" in document
    assert "<code>0.08</code>" in document
    assert "confounds had NaN in the first row" in document
    assert str(report) == document
    assert report._repr_html_() == document


def test_report_without_cleaning_data_says_there_were_no_warnings(real_run):
    report = build_run_report(
        title="mask only", mask=real_run["mask"], mean_data=real_run["mean"], parameters={}
    )
    document = report.get_html()
    assert len(_png_sizes(document)) == 1
    assert "No warnings." in document


def test_save_as_html_writes_atomically_and_leaves_no_temporary(tmp_path, real_run):
    report = build_run_report(
        title="x", mask=real_run["mask"], mean_data=real_run["mean"], parameters={"a": 1}
    )
    target = tmp_path / "nested" / "report.html"
    assert report.save_as_html(target) == target
    assert target.read_text(encoding="utf-8") == report.get_html()
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_temporal_snr_is_mean_over_std_and_zero_for_flat_signals():
    signals = np.array([[10.0, 5.0], [12.0, 5.0], [14.0, 5.0]], dtype=np.float32)
    tsnr = temporal_snr(signals)
    assert tsnr.dtype == np.float32
    np.testing.assert_allclose(tsnr[0], 12.0 / np.std([10.0, 12.0, 14.0]), rtol=1e-6)
    assert tsnr[1] == 0


def test_subject_report_links_each_run_and_lists_failures():
    methods = methods_paragraph(
        {
            "smoothing_fwhm": 6.0,
            "detrend": True,
            "low_pass": 0.08,
            "high_pass": 0.01,
            "standardize": "zscore_sample",
            "confounds": ["trans_x", "csf"],
            "n_volumes_censored": 3,
            "t_r": 2.0,
        },
        {"masker-wf": "0.1.0", "numpy": np.__version__},
    )
    report = build_subject_report(
        "01",
        [
            {"name": "run-1", "report": "sub-01/figures/run-1.html", "volumes kept": 37},
            {"name": "run-2", "report": "sub-01/figures/run-2.html", "volumes kept": 40},
        ],
        methods,
        errors=[{"name": "run-3", "reason": "confounds has 39 rows"}],
    )
    document = report.get_html()
    assert "href='sub-01/figures/run-1.html'" in document
    assert "href='sub-01/figures/run-2.html'" in document
    assert "confounds has 39 rows" in document
    for fact in ("6.0 mm FWHM", "0.01-0.08 Hz", "2 confounds", "3 volumes", "zscore_sample"):
        assert fact in methods
        assert fact in document


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(
    _chromium() is None, reason="Chromium is not installed (apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(tmp_path, real_run):
    report = build_run_report(
        title="browser check",
        mask=real_run["mask"],
        mean_data=real_run["mean"],
        parameters={"smoothing_fwhm": 6.0},
        signals_before=real_run["before"],
        signals_after=real_run["after"],
        kept_volumes=real_run["kept"],
        tsnr_before=real_run["tsnr_before"],
        tsnr_after=real_run["tsnr_after"],
    )
    page = tmp_path / "report.html"
    # The check runs in the page: every image decoded, and its result put in the title.
    probe = (
        "<script>window.addEventListener('load',()=>{const imgs=[...document.images];"
        "const ok=imgs.length>0&&imgs.every(i=>i.complete&&i.naturalWidth>0);"
        "document.title='IMAGES-'+(ok?'OK':'BROKEN')+'-'+imgs.length;});</script>"
    )
    page.write_text(report.get_html().replace("</body>", probe + "</body>"), encoding="utf-8")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "<title>IMAGES-OK-3</title>" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "run_report.png"
    subprocess.run(
        [
            _chromium(),
            *flags,
            f"--screenshot={screenshot}",
            "--window-size=1100,2400",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_workflow_report_data_gives_tsnr_after_cleaning_even_when_standardized(
    tmp_path, ds003_path, ds003_mask_path
):
    """CleanSignals' qc file: tSNR after = input mean over the residual noise, which a
    standardized output hides; checked against NiftiMasker run without standardization."""
    from masker_wf import NiftiMasker, masking
    from masker_wf._io import load_qc
    from masker_wf.workflow import run_masker_workflow

    params = {"smoothing_fwhm": 5.0, "detrend": True, "high_pass": 0.02, "t_r": 2.0}
    kept = np.setdiff1d(np.arange(20), [4, 9])
    outputs = run_masker_workflow(
        ds003_path,
        cache_root=tmp_path / "cache",
        mask_file=ds003_mask_path,
        sample_mask=kept,
        standardize="zscore_sample",
        **params,
    )
    qc = load_qc(outputs["qc_file"])

    smoothed = masking.apply_mask(ds003_path, ds003_mask_path, smoothing_fwhm=5.0)
    residual = NiftiMasker(mask_img=ds003_mask_path, standardize=False, **params).fit_transform(
        ds003_path, sample_mask=kept
    )
    # Both over the kept volumes, so that before and after compare.
    expected_after = temporal_snr(smoothed[kept], residual.std(axis=0, dtype=np.float64))
    np.testing.assert_allclose(qc["tsnr_after"], expected_after, rtol=1e-4)
    np.testing.assert_allclose(qc["tsnr_before"], temporal_snr(smoothed[kept]), rtol=1e-4)
    assert qc["signals_after"].shape[0] == kept.size
    np.testing.assert_array_equal(qc["kept_volumes"], kept)
    # The mean image's three planes through the mask's centroid.
    mean = np.asarray(nib.load(ds003_path).dataobj, dtype=np.float32).mean(axis=3)
    mask = np.asarray(nib.load(ds003_mask_path).dataobj) > 0
    x, y, z = (int(np.rint(c)) for c in np.argwhere(mask).mean(axis=0))
    expected_planes = (mean[x], mean[:, y], mean[:, :, z])
    for plane, expected in zip(qc["mean_planes"], expected_planes, strict=True):
        np.testing.assert_allclose(plane, expected, rtol=1e-5)


def test_saved_report_is_readable_by_others(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = build_subject_report("01", [], "methods").save_as_html(tmp_path / "r.html")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_methods_paragraph_names_the_filter_that_ran():
    versions = {"masker-wf": "0"}
    cosine = methods_paragraph(
        {"high_pass": 0.01, "clean_args": {"filter": "cosine"}, "n_volumes_censored": 3},
        versions,
    )
    assert "cosine high-pass" in cosine
    assert "Butterworth" not in cosine
    assert "spline" not in cosine  # no interpolation without a Butterworth filter
    band = methods_paragraph(
        {"high_pass": 0.01, "low_pass": 0.08, "n_volumes_censored": 3}, versions
    )
    assert "Butterworth band-pass filtering (0.01-0.08 Hz)" in band
    assert "cubic splines" in band


def test_report_tsnr_uses_the_kept_volumes_of_each_run(ds003_path):
    """Per-run sample masks (indices local to each run) select the volumes of the tSNR."""
    from masker_wf import NiftiMasker, masking

    masker = NiftiMasker(runs=np.repeat([0, 1], 10), detrend=True).fit(ds003_path)
    masker.transform(ds003_path, sample_mask=[np.r_[0:8], np.r_[1:10]])
    raw = masking.apply_mask(ds003_path, masker.mask_img_)
    kept = np.r_[0:8, 11:20]
    html = masker.generate_report().get_html()
    assert f"{float(np.median(temporal_snr(raw[kept]))):.6g}" in html
