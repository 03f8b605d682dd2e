"""What part of the hall a supervisor may watch and act on: the one rule, written once.

A catalog supervisor with ``departments`` supervises those departments only; one without
supervises the whole hall. The scope is read from the catalog by the principal's subject,
never from the token, so a token cannot claim more than the catalog gives (and a supervisor
taken out of the catalog keeps nothing). Every supervisor check (events, file routes, cases,
the wall, monitoring) goes through :class:`Scope`.

Clerks, residents and kiosks are not scoped here: their own rules (the tickets they hold, the
matters they serve) already bound them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rooms.catalog import Catalog
from rooms.errors import ForbiddenError
from signaling.identity import Principal, Role

__all__ = ["Scope", "scope_of", "scope_of_supervisor"]


@dataclass(frozen=True, slots=True)
class Scope:
    """``whole_hall``, or exactly ``departments`` (possibly none)."""

    whole_hall: bool
    departments: frozenset[str] = frozenset()

    @classmethod
    def everything(cls) -> Scope:
        return cls(whole_hall=True)

    def covers_department(self, department_id: str | None) -> bool:
        return self.whole_hall or (department_id is not None
                                   and department_id in self.departments)

    def covers_matter(self, catalog: Catalog, matter_id: str | None) -> bool:
        matter = catalog.matters.get(matter_id or "")
        return self.covers_department(None if matter is None else matter.department_id)

    def covers_any(self, department_ids: Iterable[str]) -> bool:
        return self.whole_hall or not self.departments.isdisjoint(department_ids)

    def describe(self) -> str:
        """The scope in words, for error messages: only the caller's own departments."""
        if self.whole_hall:
            return "the whole hall"
        if not self.departments:
            return "no department"
        return "department " + ", ".join(sorted(self.departments))

    def check_department(self, department_id: str | None, what: str) -> None:
        """ForbiddenError unless ``department_id`` is in scope. The message names the
        caller's scope only: never the other department, nor anything of its data."""
        if not self.covers_department(department_id):
            raise ForbiddenError(f"{what} is outside your supervision scope "
                                 f"({self.describe()})")

    def to_dict(self) -> dict[str, object]:
        return {"whole_hall": self.whole_hall, "departments": sorted(self.departments)}


def scope_of(catalog: Catalog, principal: Principal) -> Scope:
    """The supervisor's scope from the catalog; callers check the role first (anyone else
    is given no department)."""
    if principal.role != Role.SUPERVISOR:
        return Scope(whole_hall=False)
    return scope_of_supervisor(catalog, principal.subject)


def scope_of_supervisor(catalog: Catalog, supervisor_id: str) -> Scope:
    profile = catalog.supervisors.get(supervisor_id)
    if profile is None:
        return Scope(whole_hall=False)
    if not profile.departments:
        return Scope.everything()
    return Scope(whole_hall=False, departments=profile.departments)
