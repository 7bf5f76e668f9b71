"""Reports: content of the per-run and per-subject pages, and rendering in a real browser."""

import base64
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from masker_wf.reports import (
    build_run_report,
    build_subject_report,
    figures,
    methods_paragraph,
    temporal_snr,
)

REPO = Path(__file__).resolve().parent.parent
# Screenshots of the rendered pages, kept by CI: $CI_ARTIFACTS, else test-artifacts/.
ARTIFACTS = Path(os.environ.get("CI_ARTIFACTS") or REPO / "test-artifacts")


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


def test_subject_report_links_each_run_and_lists_failures_and_warnings():
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
            {
                "name": "run-1",
                "report": "sub-01/figures/run-1.html",
                "volumes_kept": 37,
                "warnings": ["few degrees of freedom: 3 left"],
                "flags": ["low_dof"],
            },
            {"name": "run-2", "report": "sub-01/figures/run-2.html", "volumes_kept": 40},
        ],
        methods,
        errors=[{"name": "run-3", "reason": "confounds has 39 rows"}],
    )
    document = report.get_html()
    # Links are attributes of the template (double quotes), values escaped by jinja2.
    assert 'href="sub-01/figures/run-1.html"' in document
    assert 'href="sub-01/figures/run-2.html"' in document
    assert "confounds has 39 rows" in document
    assert "few degrees of freedom: 3 left" in document
    assert '<span class="flag low_dof">low_dof</span>' in document
    for fact in ("6.0 mm FWHM", "0.01-0.08 Hz", "2 confounds", "3 volumes", "zscore_sample"):
        assert fact in methods
        assert fact in document


def test_pages_come_from_the_package_templates_and_escape_values():
    templates = resources.files("masker_wf") / "data" / "templates"
    names = {entry.name for entry in templates.iterdir()}
    assert {"run_report.html.j2", "subject_report.html.j2", "group_report.html.j2"} <= names
    # No HTML is assembled in Python: the report modules hold no markup.
    for module in (REPO / "masker_wf" / "reports").glob("*.py"):
        source = module.read_text()
        assert "<section" not in source
        assert "<table" not in source
    report = build_subject_report("01", [], "<script>alert(1)</script>")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report.get_html()


def test_views_are_drawn_in_millimetres_with_their_directions():
    affine = np.diag([12.5, 12.5, 16.0, 1.0])
    sagittal, coronal, axial = figures.views((16, 16, 9), (8, 8, 4), affine)
    assert (sagittal.name, coronal.name, axial.name) == ("sagittal", "coronal", "axial")
    assert (sagittal.width_mm, sagittal.height_mm) == (200.0, 144.0)  # y across, z up
    assert (axial.width_mm, axial.height_mm) == (200.0, 200.0)
    assert sagittal.edges == {"left": "P", "right": "A", "top": "S", "bottom": "I"}
    assert coronal.edges == {"left": "L", "right": "R", "top": "S", "bottom": "I"}
    assert axial.position == "z = 64 mm"
    # A left-right flipped grid (LAS) is drawn with its own directions, not RAS's.
    flipped = affine.copy()
    flipped[0, 0] = -12.5
    assert figures.views((16, 16, 9), (8, 8, 4), flipped)[1].edges["right"] == "L"
    # A grid stored as x, z, y (axial slices along the second axis) still gets its names.
    swapped = np.array([[2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, 4.0, 0, 0], [0, 0, 0, 1]])
    names = [v.name for v in figures.views((10, 12, 14), (5, 6, 7), swapped)]
    assert names == ["sagittal", "coronal", "axial"]


def test_carpet_rows_go_from_superior_to_inferior():
    mask = np.zeros((2, 2, 3), dtype=bool)
    mask[0, 0, :] = mask[1, 1, 2] = True  # mask order: (0,0,0) (0,0,1) (0,0,2) (1,1,2)
    order = figures.carpet_order(mask, np.eye(4))
    assert mask[tuple(np.argwhere(mask)[order[0]])]
    heights = np.argwhere(mask)[order][:, 2]
    assert heights.tolist() == [2, 2, 1, 0]
    # Of an evenly spaced sample of the voxels, only those columns are ordered.
    assert figures.carpet_order(mask, np.eye(4), columns=[0, 3]).tolist() == [1, 0]


def test_figures_keep_the_voxel_aspect(real_run):
    """The mask figure of 12.5 x 12.5 x 16 mm voxels: the sagittal view is wider than tall."""
    affine = np.diag([12.5, 12.5, 16.0, 1.0])
    uri = figures.mask_overlay_figure(real_run["mean"], real_run["mask"], affine)
    ((width, height),) = _png_sizes(uri)
    # Three views at one mm scale: 16x9 voxels of 12.5x16 mm (twice) and 16x16 of 12.5 mm.
    assert width == 9 * 96
    expected = 9 * 96 * 0.93 * 200 / 600 + 0.3 * 96
    assert abs(height - expected) <= 2


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
    # In the order the steps run: the censored volumes filled in first, removed after the
    # filter (the text used to list the censoring after the filter, "interpolated before").
    assert (
        band.index("cubic-spline interpolation of the censored volumes")
        < band.index("Butterworth band-pass")
        < band.index("removal of the interpolated volumes")
    )


def test_methods_paragraph_states_the_scrubbing_criteria_and_the_independent_regressors():
    versions = {"masker-wf": "0"}
    scrubbing = {
        "strategy": ["motion", "scrub"],
        "fd_threshold": 0.5,
        "std_dvars_threshold": 1.5,
        "scrub": 5,
    }
    text = methods_paragraph(
        {
            "n_volumes_censored": 4,
            "confounds": ["a", "b", "c"],
            "n_independent_confounds": 2,
            "confounds_parameters": scrubbing,
        },
        versions,
    )
    assert "framewise displacement above 0.5 mm or standardized DVARS above 1.5" in text
    assert "segments of fewer than 5 volumes" in text
    assert "regression of 3 confounds, 2 of them linearly independent on the kept volumes" in text
    # Without scrubbing, the reason stays general; as many independent regressors as
    # columns are not mentioned.
    plain = methods_paragraph(
        {"n_volumes_censored": 2, "confounds": ["a", "b"], "n_independent_confounds": 2},
        versions,
    )
    assert "framewise" not in plain
    assert "censoring of 2 volumes (non-steady-state and/or motion outliers)" in plain
    # A strategy known not to scrub censors only the first volumes.
    motion = methods_paragraph(
        {"n_volumes_censored": 2, "confounds_parameters": {"strategy": ["motion"]}}, versions
    )
    assert "censoring of 2 volumes (non-steady-state volumes at the start of the run)" in motion
    assert "linearly independent" not in plain
    # scrub 0 removes no segment: no "segments of fewer than 0 volumes".
    no_segments = methods_paragraph(
        {"n_volumes_censored": 4, "confounds_parameters": {**scrubbing, "scrub": 0}}, versions
    )
    assert "standardized DVARS above 1.5)" in no_segments
    assert "segments" not in no_segments


def test_report_tsnr_uses_the_kept_volumes_of_each_run(ds003_path):
    """Per-run sample masks (indices local to each run) select the volumes of the tSNR."""
    from masker_wf import NiftiMasker, masking

    masker = NiftiMasker(runs=np.repeat([0, 1], 10), detrend=True).fit(ds003_path)
    masker.transform(ds003_path, sample_mask=[np.r_[0:8], np.r_[1:10]])
    raw = masking.apply_mask(ds003_path, masker.mask_img_)
    kept = np.r_[0:8, 11:20]
    html = masker.generate_report().get_html()
    assert f"{float(np.median(temporal_snr(raw[kept]))):.6g}" in html


# --------------------------------------------------------------------------- in a browser
RAW = REPO / "bids_examples" / "ds-masker"
FMRIPREP = RAW / "derivatives" / "fmriprep"
STEM = "sub-01_task-rhymes_run-01_space-MNI152NLin2009cAsym_desc-denoised"
README_OPTIONS = [
    "--denoise-strategy", "scrubbing", "--fd-threshold", "0.5", "--smoothing-fwhm", "6",
    "--detrend", "--standardize", "zscore_sample", "--low-pass", "0.08", "--high-pass", "0.01",
]  # fmt: skip


@pytest.fixture(scope="module")
def app_pages(tmp_path_factory):
    """The App's pages on the bundled dataset: sub-01 processed with warnings, sub-02 refused."""
    from masker_wf.cli.run import main

    root = tmp_path_factory.mktemp("pages")
    out = root / "out"
    argv = [str(RAW), str(out), "participant", "--derivatives", f"fmriprep={FMRIPREP}"]
    argv += ["-w", str(root / "work"), *README_OPTIONS]
    assert (
        main([*argv, "--participant-label", "01", "--motion", "basic", "--wm-csf", "basic"]) == 0
    )
    assert main([*argv, "--participant-label", "02"]) == 65
    assert main([str(RAW), str(out), "group"]) == 0
    return out


def test_the_apps_run_report_says_what_was_done(app_pages):
    document = (app_pages / "sub-01" / "figures" / f"{STEM}_report.html").read_text()
    assert f"<title>{STEM}_bold</title>" in document  # the output's name, not the input's
    assert f"<h1>{STEM}_bold</h1>" in document
    # Warnings come first, then the numbers and the denoising record.
    sections = re.findall(r'<section id="(\w+)">', document)
    assert sections[:3] == ["warnings", "summary", "denoising"]
    assert "few degrees of freedom: 2 degree(s) of freedom left" in document
    for fact in (
        "<code>scrubbing</code>",
        "Butterworth high-pass 0.01 Hz, low-pass 0.08 Hz",
        "<th>fd threshold</th><td><code>0.5</code>",
        "2 = 35 volumes kept - 9 confound regressors - 2 mean/trend terms - 22 dimensions",
        "1 removed (auto: fMRIPrep&#39;s non_steady_state_outlierXX confound columns)",
        "The 9 confound regressors",
        "The 5 censored volumes",
        "non_steady_state",
        "the input&#39;s brain mask",
    ):
        assert fact in document, fact
    assert "<th>mask_strategy</th>" not in document  # fMRIPrep's mask: nothing computed it
    assert len(_png_sizes(document)) == 4


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise AssertionError("Chromium is needed for this test: apt-get install chromium")


# Runs in the page once it is loaded: every image decoded, and nothing wider than the window
# (the title carries the result to --dump-dom).
_PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.images];
  const decoded = images.every((i) => i.complete && i.naturalWidth > 0);
  const wide = [document.documentElement, ...document.querySelectorAll('.scroll')]
    .filter((e) => e.scrollWidth > e.clientWidth + 1).length;
  document.title = `PROBE images=${images.length} decoded=${decoded} overflowing=${wide}`;
});</script>"""


def _render(page: Path, tmp_path: Path, screenshot: Path, width: int, height: int) -> str:
    """The page's probe result in headless Chromium, and its screenshot."""
    probed = page.with_name(f"probed_{page.name}")
    probed.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={width},{height}",
    ]  # fmt: skip
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    subprocess.run(
        [_chromium(), *flags, f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    probed.unlink()
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return re.search(r"<title>(PROBE[^<]*)</title>", dom).group(1)


def test_pages_render_in_headless_chromium(app_pages, tmp_path):
    """The run report, a subject page and the group page, at a laptop's 1100 px: every figure
    decodes and nothing overflows the window. The screenshots are kept as CI artifacts."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pages = {
        "run_report": (app_pages / "sub-01" / "figures" / f"{STEM}_report.html", 4, 3600),
        "subject_page": (app_pages / "sub-01.html", 0, 1300),
        "group_page": (app_pages / "index.html", 0, 1100),
    }
    for name, (page, n_images, height) in pages.items():
        probe = _render(page, tmp_path, ARTIFACTS / f"{name}.png", 1100, height)
        assert probe == f"PROBE images={n_images} decoded=true overflowing=0", (name, probe)
    index = (app_pages / "index.html").read_text()
    # Each processed run's report is linked, flagged runs first (sub-02's refused runs).
    links = re.findall(r'href="(sub-01/figures/[^"]+_report.html)"', index)
    assert len(links) == 2
    assert all((app_pages / link).is_file() for link in links)
    assert index.index("refused") < index.index("low_dof</span>")


def test_estimator_report_renders_in_headless_chromium(tmp_path, real_run):
    report = build_run_report(
        title="NiftiMasker report",
        mask=real_run["mask"],
        mean_data=real_run["mean"],
        parameters={"smoothing_fwhm": 6.0},
        signals_before=real_run["before"],
        signals_after=real_run["after"],
        t_r=2.0,
        kept_volumes=real_run["kept"],
        tsnr_before=real_run["tsnr_before"],
        tsnr_after=real_run["tsnr_after"],
        affine=np.diag([12.5, 12.5, 16.0, 1.0]),
    )
    page = report.save_as_html(tmp_path / "report.html")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    probe = _render(page, tmp_path, ARTIFACTS / "estimator_report.png", 1100, 2600)
    assert probe == "PROBE images=3 decoded=true overflowing=0"


def test_the_estimators_report_states_its_degrees_of_freedom(ds003_path):
    from masker_wf import NiftiMasker
    from masker_wf.signal import degrees_of_freedom

    rng = np.random.default_rng(0)
    n_volumes = nib.load(ds003_path).shape[3]
    confounds = np.cumsum(rng.normal(size=(n_volumes, 3)), axis=0)
    kept = np.setdiff1d(np.arange(n_volumes), [5, 11])
    params = {"detrend": True, "standardize": "zscore_sample", "low_pass": 0.2, "t_r": 2.0}
    masker = NiftiMasker(mask_strategy="epi", **params)
    masker.fit_transform(ds003_path, confounds=confounds, sample_mask=kept)
    document = masker.generate_report().get_html()
    budget = degrees_of_freedom(n_volumes, confounds=confounds, sample_mask=kept, **params)
    # The README promises the estimator's report the numbers the App's page shows.
    assert f"<th>degrees of freedom left</th><td><code>{budget.budget}</code>" in document
    assert f"{budget.budget} = {budget.n_kept} volumes kept" in document
    assert "warn below" not in document  # the App's thresholds, not the estimator's


def test_tsnr_caption_says_when_cleaning_lowered_it(real_run):
    common = {
        "title": "run",
        "mask": real_run["mask"],
        "mean_data": real_run["mean"],
        "parameters": {},
        "t_r": 2.0,
    }
    rose = build_run_report(
        **common, tsnr_before=real_run["tsnr_before"], tsnr_after=real_run["tsnr_before"] * 2
    ).get_html()
    assert "Here it fell" not in rose
    fell = build_run_report(
        **common, tsnr_before=real_run["tsnr_before"], tsnr_after=real_run["tsnr_before"] / 2
    ).get_html()
    median = float(np.median(real_run["tsnr_before"]))
    assert f"Here it fell (median {median:.3g} before, {median / 2:.3g} after)" in fell
