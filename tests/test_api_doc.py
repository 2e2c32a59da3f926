"""docs/api.md is the API reference generated from the docstrings; it must be up to date."""

from pathlib import Path

from jaxrl.utils import apidoc


def test_api_reference_is_up_to_date():
    path = Path(__file__).resolve().parents[1] / "docs" / "api.md"
    assert path.read_text() == apidoc.render(), (
        "docs/api.md is stale: run `python -m jaxrl.utils.apidoc > docs/api.md`"
    )
