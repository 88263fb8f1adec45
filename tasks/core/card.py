"""A committed training set -> its dataset card: README.md in the Hugging Face card format, so a set copied to the
Hub or opened with `datasets.load_dataset(folder)` explains itself. YAML front matter first (the parts as the
`train` split, the columns as features), then what a row is, the counts, how the set was made, and the config and
run it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

PARTS = "part-*.parquet"  # the set's data files; _quarantine/, _shards/ and the marker are not data


@dataclass(frozen=True)
class SetFacts:
    """What a card says about one committed set."""

    name: str
    about: str  # how it was made, in the papers' words
    record: str  # the record type's name
    row_doc: str  # what one row is (the record's docstring)
    features: list[dict[str, str]]  # [{name, dtype}] or [{name, list}], as `datasets` reads them
    marker: dict[str, Any]  # the stage's _SUCCESS.json (rows, parts, config hash, versions, metrics)
    run_id: str
    url: str  # where the set is
    config: dict[str, Any]  # the stage's config section
    upstream: dict[str, str] = field(default_factory=dict)  # stage -> URL of what it was built from


def size_category(rows: int) -> str:
    """The Hub's size_categories bucket for a row count."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M" if rows < 10_000_000 else "n>10M"


def front_matter(facts: SetFacts) -> dict[str, Any]:
    return {
        "pretty_name": f"mathfactory {facts.name} ({facts.run_id})",
        "tags": ["mathfactory", "math", "synthetic", facts.name],
        "size_categories": [size_category(facts.marker["rows"])],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": PARTS}]}],
        "dataset_info": {"features": facts.features},
    }


def dataset_card(facts: SetFacts) -> str:
    m = facts.marker
    metrics = m.get("metrics", {})
    counts = {"rows": m["rows"], "parts": len(m["parts"]), "distinct problems": metrics.get("problems"),
              "rows refused (quarantined)": m.get("quarantined", 0)}
    counts.update({f"chosen side: {k}": v for k, v in sorted(metrics.get("chosen_sources", {}).items())})
    counts.update({f"skipped: {k}": v for k, v in sorted(metrics.get("skipped", {}).items())})
    lines = [
        "---", yaml.safe_dump(front_matter(facts), sort_keys=False).rstrip(), "---", "",
        f"# {facts.name}", "",
        facts.about, "",
        f"One row is a `{facts.record}`: {' '.join(facts.row_doc.split())}", "",
        "## Counts", "",
        "| | |", "|---|---|",
        *(f"| {k} | {v} |" for k, v in counts.items() if v is not None), "",
        "## Columns", "",
        "| column | type |", "|---|---|",
        *(f"| {f['name']} | {f.get('dtype') or 'list of ' + f['list']} |" for f in facts.features), "",
        "## Where it came from", "",
        f"Run `{facts.run_id}` of mathfactory {m.get('code_version', '')}, committed {m.get('committed_at', '')} "
        f"(schema version {m.get('schema_version')}, config hash `{m.get('config_hash')}`), at `{facts.url}`.", "",
        "Built from these datasets of the same run (each folder's `_SUCCESS.json` holds its own config hash):", "",
        *(f"- {stage}: `{url}`" for stage, url in facts.upstream.items()), "",
        "The config that decided it:", "",
        "```yaml", yaml.safe_dump(facts.config, sort_keys=True).rstrip(), "```", "",
        "## Open it", "",
        "```python",
        "import datasets",
        f'datasets.load_dataset("parquet", data_files="{facts.url}/{PARTS}")  # or load_dataset(<this folder>)',
        "```", "",
    ]
    return "\n".join(lines)
