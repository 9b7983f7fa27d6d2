"""Column names of a user's data file: `columns.prompt=question` reads the file's `question`
column as the prompt. The renaming happens before the schema is recognised, so a mapped file reads
as any documented schema (README "Data schemas")."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_dist.config.fields import param


@dataclass
class DataColumnsConfig:
    prompt: str = param("", "column holding the prompt (a string or a list of messages); empty: 'prompt'")
    response: str = param("", "column holding the demonstration (SFT); empty: 'response' (or TRL's 'completion')")
    chosen: str = param("", "column holding the preferred response; empty: 'chosen'")
    rejected: str = param("", "column holding the dispreferred response; empty: 'rejected'")
    messages: str = param("", "column holding a conversation ([{role, content}, ...]); empty: 'messages'")
    text: str = param("", "column holding pretraining text; empty: 'text'")

    def mapping(self) -> dict[str, str]:
        """{standard name: the file's column} for the names that are set."""
        return {name: column for name, column in vars(self).items() if column and column != name}
