"""The contract package imports its own dependencies only (numpy, pydantic, protobuf, grpcio):
no command-line library, which the contract does not depend on."""

from __future__ import annotations

import subprocess
import sys


def test_the_contract_imports_no_cli_library() -> None:
    code = (
        "import sys, pcm_contract, pcm_contract.models, pcm_contract.run_config, "
        "pcm_contract.codec, pcm_contract.errors; "
        "print(sorted(m for m in ('typer', 'click', 'rich', 'tyro') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
