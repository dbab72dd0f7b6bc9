"""Regular expressions from settings: compiled, and refused where matching could take for ever.

Python's `re` backtracks: when a name does not match, it tries every way the pattern could
have matched it. For `(a+)+$` there are 2**n ways to split n `a`s, so one file name of 40
characters would stall the source that matches it (a part id pattern runs on every name in
the inbox, and the name is chosen by whoever drops the file). Such a pattern is refused when
the config is read, with the reason, instead of being found on the line.

How: the pattern is parsed with the parser `re.compile` itself uses and turned into an
automaton that keeps every route a backtracking matcher can take (a Thompson-style NFA,
whose epsilon paths are counted, so `(a+)+` keeps its two loops where a minimal automaton
would merge them). The number of routes over some text then grows

* exponentially when one state can loop back to itself in two different ways over the same
  text (`(a+)+`, `(a|a)*`, `(a*)*`, `(-?\\d+)+`), the test of Allauzen, Mohri and Rastogi,
  "General algorithms for testing the ambiguity of finite automata" (2008): refused;
* like n**k when k loops follow each other and can all take the same text (`.*_.*_.*`; a
  pattern without `^` is searched from every position, which counts as one more loop):
  refused from `MAX_LOOP_CHAIN` loops on;
* as the product of the choices outside loops (`a?a?a?...aaa`): refused beyond
  `MAX_ROUTES`. Bounded repeats up to `MAX_UNROLL` are written out for this count.

Characters are sampled: ASCII plus a few others (accented, Arabic digit, CJK, an emoji, an
undecodable byte); two classes that share only characters outside the sample count as
disjoint. Where the analysis is unsure otherwise, it refuses (possessive repeats and atomic
groups are analysed as if they backtracked).

Example:
    >>> check_regex(r"^(?P<part>[A-Z]+-\\d+)_", required_groups=("part",)).groupindex["part"]
    1
    >>> check_regex(r"(a+)+$")
    Traceback (most recent call last):
    ...
    ValueError: the pattern can take exponential time on some names: a repeated part can match the same text in more than one way (as in (a+)+, (a|a)* or (a*)*)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

try:  # Python >= 3.11
    from re import _compiler as sre_compile
    from re import _constants as sre_constants
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_compile  # type: ignore[no-redef]
    import sre_constants  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

MAX_PATTERN_CHARS = 256  # a file-name pattern longer than this is a mistake, and it bounds the analysis
MAX_POSITIONS = 160  # characters the automaton may hold after bounded repeats are written out
MAX_UNROLL = 16  # a{0,16} is written out (bounded work); a{0,17} and longer count as loops
MAX_LOOP_CHAIN = 4  # 4 loops over the same text: about n**4/24 = 176 M steps on a 255-character name
MAX_ROUTES = 100_000  # ways through the parts outside loops (a?{20}a{20} has 2**20)

_C = sre_constants
_ALPHABET = tuple(chr(code) for code in range(128)) + (
    "\x85", "\xa0", "\xe9", "\xdf", "\u0663", "\u2028", "\u4e00", "\U0001f600", "\udcff",
)
_ALL = (1 << len(_ALPHABET)) - 1
_LEAVES = {_C.LITERAL, _C.NOT_LITERAL, _C.ANY, _C.IN}
_REPEATS = {_C.MAX_REPEAT, _C.MIN_REPEAT, getattr(_C, "POSSESSIVE_REPEAT", _C.MAX_REPEAT)}
_ANCHORS_AT_START = {_C.AT_BEGINNING_STRING, _C.AT_BEGINNING}


def check_regex(pattern: str, *, required_groups: Sequence[str] = ()) -> re.Pattern[str]:
    """Compile `pattern`; ValueError (one line) if invalid, lacking a group, or prone to runaway backtracking.

    The pattern is assumed to be used with `re.search`, so one without a leading `^` or `\\A`
    is analysed as if preceded by `.*?`.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        msg = f"a pattern of {len(pattern)} characters is too long (at most {MAX_PATTERN_CHARS})"
        raise ValueError(msg)
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        msg = f"not a valid regular expression: {exc}"
        raise ValueError(msg) from None
    missing = [name for name in required_groups if name not in compiled.groupindex]
    if missing:
        groups = ", ".join(f"(?P<{name}>...)" for name in missing)
        msg = f"the pattern needs the named group {groups}"
        raise ValueError(msg)
    problem = backtracking_problem(pattern)
    if problem:
        msg = f"the pattern {problem}"
        raise ValueError(msg)
    return compiled


def backtracking_problem(pattern: str) -> str | None:
    """Why `pattern` can make `re.search` backtrack for exponential or high-polynomial time; None if it cannot.

    Example:
        >>> backtracking_problem(r"^(?P<part>\\w+)_field\\d+") is None
        True
        >>> backtracking_problem(r".*_.*_.*_.*")
        'can take very long on some names: 4 or more repeats in a row can take the same text (as in .*_.*_.*; without ^ the search from every position counts as one more); anchor it with ^ or use narrower classes such as [^_]*'
    """
    parsed = sre_parse.parse(pattern)
    flags = parsed.state.flags
    items = list(parsed)
    anchored = bool(items) and items[0][0] == _C.AT and items[0][1] in _ANCHORS_AT_START and not flags & re.MULTILINE
    automaton = _Automaton(parsed.state)
    problem = automaton.analyse(items, flags, searched=not anchored)
    while problem is None and automaton.lookarounds:  # each lookaround body runs as a pattern of its own
        body = automaton.lookarounds.pop()
        problem = _Automaton(parsed.state).analyse(body, flags, searched=not anchored)
    return problem


class _Automaton:
    """An epsilon-NFA over the sampled alphabet; a character position is a (source, target, mask) leaf."""

    def __init__(self, state: object) -> None:
        self._state = state
        self.epsilon: list[list[int]] = []
        self.leaves: list[tuple[int, int, int]] = []
        self.lookarounds: list[list] = []
        self._masks: dict[tuple[str, int], int] = {}

    # ---- building -----------------------------------------------------------------------

    def _new(self) -> int:
        self.epsilon.append([])
        return len(self.epsilon) - 1

    def _leaf(self, mask: int) -> tuple[int, int]:
        if len(self.leaves) >= MAX_POSITIONS:
            raise _TooLargeError
        source, target = self._new(), self._new()
        self.leaves.append((source, target, mask))
        return source, target

    def _sequence(self, items: Iterable, flags: int) -> tuple[int, int]:
        start = current = self._new()
        for op, av in items:
            first, last = self._item(op, av, flags)
            self.epsilon[current].append(first)
            current = last
        return start, current

    def _item(self, op: object, av: object, flags: int) -> tuple[int, int]:
        if op in _LEAVES:
            return self._leaf(self._mask(op, av, flags))
        if op == _C.SUBPATTERN:
            _group, add_flags, del_flags, body = av
            return self._sequence(body, (flags | add_flags) & ~del_flags)
        if op == getattr(_C, "ATOMIC_GROUP", None):
            return self._sequence(av, flags)
        if op == _C.BRANCH:
            return self._branch(av[1], flags)
        if op == _C.GROUPREF_EXISTS:
            _group, yes, no = av
            return self._branch([yes, no or []], flags)
        if op in _REPEATS:
            low, high, body = av
            return self._repeat(low, high, body, flags)
        if op in (_C.ASSERT, _C.ASSERT_NOT):
            self.lookarounds.append(list(av[1]))
            point = self._new()
            return point, point
        if op == _C.AT:
            point = self._new()
            return point, point
        # A back-reference (or anything newer) can match any text: a loop over every character.
        source, target = self._leaf(_ALL)
        self.epsilon[target].append(source)
        start, end = self._new(), self._new()
        self.epsilon[start] += [source, end]
        self.epsilon[target].append(end)
        return start, end

    def _branch(self, alternatives: Iterable, flags: int) -> tuple[int, int]:
        start, end = self._new(), self._new()
        for alternative in alternatives:
            first, last = self._sequence(alternative, flags)
            self.epsilon[start].append(first)
            self.epsilon[last].append(end)
        return start, end

    def _repeat(self, low: int, high: int, body: object, flags: int) -> tuple[int, int]:
        if high != _C.MAXREPEAT and high <= MAX_UNROLL:
            start = current = self._new()
            end = self._new()
            for copy in range(high):
                if copy >= low:
                    self.epsilon[current].append(end)
                first, last = self._sequence(body, flags)
                self.epsilon[current].append(first)
                current = last
            self.epsilon[current].append(end)
            return start, end
        start, end = self._new(), self._new()
        first, last = self._sequence(body, flags)
        self.epsilon[start].append(first)
        self.epsilon[last] += [end, first]
        if low == 0:
            self.epsilon[start].append(end)
        return start, end

    def _mask(self, op: object, av: object, flags: int) -> int:
        """Which sampled characters one position matches, by asking `re` itself."""
        key = (repr((op, av)), flags)
        if key not in self._masks:
            single = sre_compile.compile(sre_parse.SubPattern(self._state, [(op, av)]), flags)
            self._masks[key] = sum(1 << index for index, char in enumerate(_ALPHABET) if single.fullmatch(char))
        return self._masks[key]

    # ---- analysis -----------------------------------------------------------------------

    def analyse(self, items: list, flags: int, *, searched: bool) -> str | None:
        if searched:  # re.search tries every start position: the same routes as a leading lazy .*
            anywhere = (_C.MIN_REPEAT, (0, _C.MAXREPEAT, [(_C.ANY, None)]))
            items = [(_C.SUBPATTERN, (None, re.DOTALL, 0, [anywhere])), *items]
        try:
            start, _end = self._sequence(items, flags)
        except _TooLargeError:
            return f"is too complex to check (more than {MAX_POSITIONS} character positions)"
        initial, successors = self._without_epsilon(start)
        return _ambiguity(initial, successors, [mask for _s, _t, mask in self.leaves])

    def _without_epsilon(self, start: int) -> tuple[dict[int, int], list[dict[int, int]]]:
        """Routes from `start` and from each position to the next positions: {position: 1, or 2 for two or more}.

        Two routes over the same epsilon moves are what a backtracking matcher tries twice; an
        epsilon cycle (a repeated part that can match nothing) gives unboundedly many.
        """
        leaf_at = {source: index for index, (source, _target, _mask) in enumerate(self.leaves)}
        component_of: dict[int, int] = {}
        routes: list[dict[int, int]] = []
        for members in _components(range(len(self.epsilon)), lambda state: self.epsilon[state]):
            index = len(routes)
            for state in members:
                component_of[state] = index
            cyclic = len(members) > 1 or members[0] in self.epsilon[members[0]]
            total: dict[int, int] = {}
            for state in members:
                if state in leaf_at:
                    total[leaf_at[state]] = total.get(leaf_at[state], 0) + 1
                for following in self.epsilon[state]:
                    if component_of[following] != index:
                        for leaf, count in routes[component_of[following]].items():
                            total[leaf] = min(2, total.get(leaf, 0) + count)
            routes.append({leaf: 2 for leaf in total} if cyclic else total)
        successors = [routes[component_of[target]] for _source, target, _mask in self.leaves]
        return routes[component_of[start]], successors


def _ambiguity(initial: dict[int, int], successors: list[dict[int, int]], masks: list[int]) -> str | None:
    """The ambiguity tests on the epsilon-free automaton (positions, and routes between them).

    Pairs of positions reached over the same text are explored only where a test needs
    them (inside one loop; from a loop onwards), so the work stays small for long patterns.
    """
    reachable = set(initial)
    frontier = list(initial)
    while frontier:
        for following in successors[frontier.pop()]:
            if following not in reachable:
                reachable.add(following)
                frontier.append(following)
    loop_of: dict[int, int] = {}
    loops = _components(sorted(reachable), lambda leaf: successors[leaf])  # sinks first
    for index, members in enumerate(loops):
        for leaf in members:
            loop_of[leaf] = index
    cyclic = [index for index, members in enumerate(loops)
              if any(loop_of[following] == index for leaf in members for following in successors[leaf])]

    def same_text(first: int, second: int) -> list[tuple[int, int]]:
        return [(a, b) for a in successors[first] for b in successors[second] if masks[a] & masks[b]]

    for index in cyclic:
        members = set(loops[index])
        # Two routes from one position to another on the same loop: two loops over one text.
        if any(count > 1 and following in members for leaf in members for following, count in successors[leaf].items()):
            return _EXPONENTIAL
        if _two_loops_through_one_position(members, same_text):
            return _EXPONENTIAL

    # Loops one after another that can take the same text: about n**k routes for k of them.
    chain: dict[int, int] = {}
    for later in reversed(cyclic):  # sources first
        members = set(loops[later])
        back = {}  # for each q of this loop: pairs from which (q, q) is reached while the second stays in the loop
        for q in members:
            back[q] = _closure([(q, q)], _predecessors_within(successors, masks, members, reachable))
        longest = 1
        for earlier, length in chain.items():
            first_loop = set(loops[earlier])
            if length + 1 <= longest:
                continue
            for p in first_loop:
                ahead = _closure([(p, p)], lambda pair, loop=first_loop: [
                    nxt for nxt in same_text(*pair) if nxt[0] in loop])
                if any((p, q) in ahead and (p, q) in back[q] for q in members):
                    longest = length + 1
                    break
        chain[later] = longest
        if longest >= MAX_LOOP_CHAIN:
            break
    longest_chain = max(chain.values(), default=0)
    if longest_chain >= MAX_LOOP_CHAIN:
        return (f"can take very long on some names: {MAX_LOOP_CHAIN} or more repeats in a row can take the same text (as in "
                ".*_.*_.*; without ^ the search from every position counts as one more); anchor it with ^ or use "
                "narrower classes such as [^_]*")

    # Routes through the parts outside loops (a?a?a?...aaa): each optional part doubles them.
    routes = [0] * len(loops)
    for index in reversed(range(len(loops))):  # sources first
        total = sum(count for leaf, count in initial.items() if loop_of[leaf] == index)
        routes[index] = min(total, MAX_ROUTES + 1)
    for index in reversed(range(len(loops))):
        for leaf in loops[index]:
            for following, count in successors[leaf].items():
                if loop_of[following] != index:
                    routes[loop_of[following]] = min(routes[loop_of[following]] + routes[index] * count, MAX_ROUTES + 1)
    if sum(routes) > MAX_ROUTES:
        return (f"can take very long on some names: more than {MAX_ROUTES} ways to match one name (as in "
                "a?a?a?...aaa: each optional part doubles them)")
    return None


def _two_loops_through_one_position(members: set[int], same_text) -> bool:
    """Allauzen et al.'s EDA test inside one loop: a pair component holding (p, p) and some (p', q'), p' != q'."""

    def inside(pair: tuple[int, int]) -> list[tuple[int, int]]:
        return [nxt for nxt in same_text(*pair) if nxt[0] in members and nxt[1] in members]

    pairs = _closure([(leaf, leaf) for leaf in members], inside)
    return any(len(component) > 1 and any(a == b for a, b in component) and any(a != b for a, b in component)
               for component in _components(sorted(pairs), inside))


def _closure(starts: list, successors) -> set:
    seen = set(starts)
    frontier = list(starts)
    while frontier:
        for following in successors(frontier.pop()):
            if following not in seen:
                seen.add(following)
                frontier.append(following)
    return seen


def _predecessors_within(successors: list[dict[int, int]], masks: list[int], loop: set[int], reachable: set[int]):
    """Pair predecessors (a, b) -> (a2, b2) over one character, with b and b2 inside `loop`."""
    preceding: dict[int, list[int]] = {}
    for leaf in reachable:
        for following in successors[leaf]:
            preceding.setdefault(following, []).append(leaf)

    def before(pair: tuple[int, int]) -> list[tuple[int, int]]:
        a2, b2 = pair
        if not masks[a2] & masks[b2]:
            return []
        return [(a, b) for a in preceding.get(a2, ()) for b in preceding.get(b2, ()) if b in loop]

    return before


_EXPONENTIAL = ("can take exponential time on some names: a repeated part can match the same text in more than "
                "one way (as in (a+)+, (a|a)* or (a*)*)")


def _components(roots: Iterable[int], successors) -> list[list[int]]:
    """Strongly connected components reachable from `roots` (Tarjan, iterative), sinks first."""
    index_of: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    found: list[list[int]] = []
    for root in roots:
        if root in index_of:
            continue
        work = [(root, iter(successors(root)))]
        index_of[root] = low[root] = len(index_of)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index_of:
                    index_of[child] = low[child] = len(index_of)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors(child))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index_of[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index_of[node]:
                    members = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        members.append(member)
                        if member == node:
                            break
                    found.append(members)
    return found


class _TooLargeError(Exception):
    """The automaton would exceed MAX_POSITIONS."""
