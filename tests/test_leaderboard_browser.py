"""The leaderboard site in a real browser: Debian's headless Chromium driven by selenium, from file://."""

from __future__ import annotations

from pathlib import Path

import pytest
from leaderboard_results import write_results
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from eval.leaderboard import build_report

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1300,1000",
)


@pytest.fixture
def browser(tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(
            f"headless Chromium is not installed ({', '.join(missing)} missing): run `make browser` "
            "(apt-get install -y chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def column_values(table, index: int) -> tuple[list[str], list[str]]:
    """(model names, the data-sort values of column ``index``) in the rows' current order."""
    rows = [row.find_elements(By.TAG_NAME, "td") for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    return [cells[1].text for cells in rows], [cells[index].get_attribute("data-sort") for cells in rows]


def full_page_screenshot(browser, path: Path) -> None:
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1300, min(height, 6000))
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(path)), f"no screenshot written to {path}"


def test_clicking_a_header_sorts_the_rows_and_the_model_page_plots_load(browser, tmp_path):
    index = build_report([str(write_results(tmp_path / "results"))], str(tmp_path / "report"))
    browser.get(index.as_uri())
    table = browser.find_element(By.CSS_SELECTOR, 'table[data-table="accuracy-water_test-all"]')
    headers = table.find_elements(By.CSS_SELECTOR, "thead th")
    energy = next(i for i, th in enumerate(headers) if th.text.startswith("energy_mae"))
    assert column_values(table, 0)[0] == ["large", "small", "reference+zero-force"]  # by rank on force_mae

    headers[energy].click()
    models, values = column_values(table, energy)
    assert models == ["small", "reference+zero-force", "large"]  # energy_mae 4 < 6 < 9
    assert [float(v) for v in values] == sorted(float(v) for v in values)
    assert headers[energy].get_attribute("aria-sort") == "ascending"
    headers[energy].click()
    assert column_values(table, energy)[0] == ["large", "reference+zero-force", "small"]
    assert headers[energy].get_attribute("aria-sort") == "descending"
    csv_link = browser.find_element(By.CSS_SELECTOR, "#accuracy-water_test-all a.csv")
    assert csv_link.get_attribute("href").startswith("data:text/csv")
    full_page_screenshot(browser, tmp_path / "index.png")

    browser.find_element(By.LINK_TEXT, "large").click()
    WebDriverWait(browser, 20).until(
        lambda d: d.execute_script("return Array.from(document.images).every(img => img.complete)")
    )
    images = browser.execute_script(
        "return Array.from(document.images).map(img => [img.getAttribute('src'), img.naturalWidth])"
    )
    assert len(images) == 5  # parity and per-element table of two domains, the learning curve
    assert all(width > 0 for _, width in images), f"images that did not load: {images}"
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [url for url in fetched if not url.startswith("file:")], f"fetched from the network: {fetched}"
    full_page_screenshot(browser, tmp_path / "model.png")
    assert (tmp_path / "model.png").read_bytes()[:4] == b"\x89PNG"
