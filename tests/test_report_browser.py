"""The run report of a whole toy-tiny run in a real browser (Debian's chromium driven by Playwright):
the verdicts at the top, every heading once, and a menu whose every entry scrolls its heading into
view below the sticky menu. Skips when chromium or playwright is absent."""

import pytest
from conftest import CHROMIUM, CHROMIUM_FLAGS

from sda_lib.workbench.report import MECHANISMS, PARTS


@pytest.mark.slow
def test_report_reads_from_the_top_and_its_menu_lands_on_each_heading(sync_api, toy_tiny_run, tmp_path):
    report = toy_tiny_run.folder / "report.html"
    screenshot = tmp_path / "report-top.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(report.as_uri())
            page.wait_for_selector(".plotly-graph-div .main-svg")  # plotly drew

            # The first thing below the menu: what this run shows, one verdict per mechanism.
            first = page.locator("section").first
            assert first.locator("h2").inner_text() == "What this run shows"
            lede = first.locator("p.lede").inner_text()
            assert lede.startswith("SDA adapted the tiny backbone to toy-tiny (") and "SASRec" in lede
            rows = first.locator("table.findings tbody tr")
            assert rows.count() == len(MECHANISMS)
            for i, label in enumerate(MECHANISMS.values()):
                assert rows.nth(i).locator("th").inner_text() == label
                verdict, measured, paper = (rows.nth(i).locator("td").nth(j).inner_text() for j in range(3))
                assert verdict and verdict != "not measured" and any(ch.isdigit() for ch in measured), (label, measured)
                assert paper  # the published value, or why there is none
            box = first.bounding_box()
            assert box["y"] < 200, "the verdicts are not at the top"

            # Every heading once; the parts in the paper's order.
            h2 = page.locator("h2").all_inner_texts()
            assert h2 == [t for t in PARTS.values() if t in h2] and len(h2) >= 8, h2
            h3 = page.locator("h3").all_inner_texts()
            assert len(h3) == len(set(h3)), [h for h in h3 if h3.count(h) > 1]
            assert not [h for h in h3 if h[:1].islower() or h.startswith(("Umap", "Moda"))], h3
            print(f"report headings: {h2}\n{h3}")

            page.screenshot(path=str(screenshot))
            print(f"report screenshot: {screenshot}")

            # Each menu entry leaves its heading in view, below the sticky menu.
            menu = page.locator("nav a")
            assert menu.count() == len(h2)
            for i in range(menu.count()):
                target = menu.nth(i).get_attribute("href")
                menu.nth(i).click()
                page.wait_for_function(f"() => location.hash === '{target}'")
                page.wait_for_timeout(50)
                nav = page.locator("nav").bounding_box()
                heading = page.locator(f"{target} > h2").bounding_box()
                bottom = page.evaluate("() => document.documentElement.scrollHeight - window.innerHeight")
                at_end = page.evaluate("() => Math.ceil(window.scrollY)") >= bottom - 1
                assert heading["y"] >= nav["y"] + nav["height"], f"{target}: heading hidden under the menu"
                assert heading["y"] + heading["height"] <= 900, f"{target}: heading below the window"
                assert at_end or heading["y"] < nav["y"] + nav["height"] + 40, f"{target}: not scrolled to"
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
