"""Who may do what: employee, support lead, admin.

Roles come from settings (`DESKMATE_ADMINS`, `DESKMATE_LEADS`: emails) and from a roles file
(`DESKMATE_ROLES_FILE`, YAML) that can also name Slack user groups and Teams / Entra group ids.
The platforms tell which groups a person is in (Slack's `usergroups.users.list`, the SSO proxy's
groups header); this module only decides. Every action checks it server-side.

    admins:
      users: [it.lead@northwind.example]
      entra_groups: [6f1c…-group-object-id]
    leads:
      users: [servicedesk.lead@northwind.example]
      slack_groups: [S0SUPPORTLEADS]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from bot.settings import Settings


class Role(IntEnum):
    employee = 0
    lead = 1
    admin = 2

    @property
    def label(self) -> str:
        return {"employee": "employee", "lead": "support lead", "admin": "admin"}[self.name]


@dataclass(frozen=True)
class RoleRule:
    """Who holds one role: by user key (email), Slack user group id, or Entra group id."""

    users: frozenset[str] = frozenset()
    slack_groups: frozenset[str] = frozenset()
    entra_groups: frozenset[str] = frozenset()

    def matches(self, user_key: str, slack_groups: Iterable[str], entra_groups: Iterable[str]) -> bool:
        return (
            user_key.lower() in self.users
            or bool(self.slack_groups & set(slack_groups))
            or bool(self.entra_groups & {g.lower() for g in entra_groups})
        )


def _rule(data: object, extra_users: Iterable[str] = ()) -> RoleRule:
    data = data if isinstance(data, dict) else {}
    return RoleRule(
        users=frozenset(u.strip().lower() for u in [*(data.get("users") or []), *extra_users] if u.strip()),
        slack_groups=frozenset(str(g).strip() for g in data.get("slack_groups") or []),
        entra_groups=frozenset(str(g).strip().lower() for g in data.get("entra_groups") or []),
    )


@dataclass(frozen=True)
class Roles:
    admins: RoleRule = field(default_factory=RoleRule)
    leads: RoleRule = field(default_factory=RoleRule)

    @classmethod
    def load(cls, roles_file: Path | None = None, admins: Iterable[str] = (), leads: Iterable[str] = ()) -> Roles:
        """Merge the roles file (if any) with the users named in settings."""
        data: dict[str, Any] = {}
        if roles_file is not None:
            loaded = yaml.safe_load(Path(roles_file).read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{roles_file}: expected `admins:` and `leads:` sections")
            data = loaded
        return cls(admins=_rule(data.get("admins"), admins), leads=_rule(data.get("leads"), leads))

    def role_of(self, user_key: str, *, slack_groups: Iterable[str] = (), entra_groups: Iterable[str] = ()) -> Role:
        slack_groups, entra_groups = list(slack_groups), list(entra_groups)
        if self.admins.matches(user_key, slack_groups, entra_groups):
            return Role.admin
        if self.leads.matches(user_key, slack_groups, entra_groups):
            return Role.lead
        return Role.employee

    def slack_groups(self) -> set[str]:
        """Every Slack user group that grants a role (the Slack adapter resolves their members)."""
        return set(self.admins.slack_groups | self.leads.slack_groups)

    def rows(self) -> list[tuple[str, str, str]]:
        """(role, kind, who) for `deskmate roles list`."""
        out = []
        for role, rule in (("admin", self.admins), ("lead", self.leads)):
            out += [(role, "user", u) for u in sorted(rule.users)]
            out += [(role, "slack group", g) for g in sorted(rule.slack_groups)]
            out += [(role, "entra group", g) for g in sorted(rule.entra_groups)]
        return out


def roles_from_settings(settings: Settings) -> Roles:
    return Roles.load(settings.roles_file, settings.admins, settings.leads)
