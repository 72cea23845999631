"""Answer extraction, normalisation and equivalence.

Three grader kinds:

- ``numeric``: both answers parsed as exact numbers (fractions allowed; no float overflow), equal
  exactly where both are integers, else within a relative tolerance of 1e-6 (absolute 1e-9); answers
  that are not numbers compare as normalised strings. A stated number's unit, sign or equation around it
  is dropped first (:func:`normalize`).
- ``math``: normalised string equality, then numbers as above, then symbolic equivalence with
  ``math_verify``, run in a worker process under a hard timeout (:data:`MATH_VERIFY_TIMEOUT`) that
  also works off the main thread. A check that times out counts as "not equivalent", and so does an
  answer too long or too deeply nested for math_verify to read whole (:data:`MAX_SYMBOLIC_CHARS`,
  :data:`MAX_SYMBOLIC_DEPTH`) unless it equals the other as text or as a number.
- ``choice``: the option letter A-E, case-insensitive.

``None`` (an abstention: no answer could be extracted) is never equivalent to anything, not even
to another ``None``.

The symbolic checks run in one long-lived worker subprocess (started on first use, restarted after
a timeout); :func:`shutdown_worker` stops it.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import queue
import re
import subprocess
import sys
import threading
from fractions import Fraction

from maft.types import GraderKind

#: Hard limit in seconds on one symbolic (math_verify) check; on timeout the answers are unequal.
MATH_VERIFY_TIMEOUT: float = 5.0
#: Limit in seconds on starting the math_verify worker process (not charged to a check).
WORKER_STARTUP_TIMEOUT: float = 120.0

#: Larger or deeper answers skip the symbolic check (see :func:`_symbolic_ok`); MATH's answers are far smaller.
MAX_SYMBOLIC_CHARS, MAX_SYMBOLIC_DEPTH = 1000, 12

REL_TOL, ABS_TOL = Fraction(1, 10**6), Fraction(1, 10**9)

# ---------------------------------------------------------------------------------------------
# Extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)")
#: How a stated final answer starts (after GSM8K's ``####``): a number, maybe signed or in dollars, an equation's
#: short name (``x = 18``), or a lone option letter
_STATED_RE = re.compile(r"[-+]?\\?\$?\s*\.?\d|[A-Za-z]\w{0,2}\s*=\s*[-+]?\\?\$?\s*\.?\d|\(?[A-Ea-e]\)?\.?$")
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def _clean(answer: str) -> str | None:
    answer = answer.strip().strip("$").strip()
    if answer.endswith(".") and not answer.endswith("\\."):
        answer = answer[:-1].rstrip()
    return answer or None


def _closing_braces(text: str) -> dict[int, int]:
    """Position of each ``{`` -> position of its matching ``}`` (unescaped braces only), in one pass."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for j, c in enumerate(text):
        if c in "{}" and j > 0 and text[j - 1] == "\\":
            continue
        if c == "{":
            stack.append(j)
        elif c == "}" and stack:
            pairs[stack.pop()] = j
    return pairs


def _box_content(text: str, start: int, closing: dict[int, int]) -> str | None:
    """The argument of the ``\\boxed`` whose name ends at ``start``: ``{...}`` or one bare token."""
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        j = closing.get(i)
        return None if j is None else text[i + 1 : j]  # None: unbalanced, e.g. a truncated response
    if i == start:  # e.g. "\boxedx": not a box
        return None
    bare = re.match(r"[^\s$]+", text[i:])
    return bare.group(0) if bare else None


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed 5``) in ``text``.

    Linear in the length of ``text``: the braces are matched once, whatever the number of boxes."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    closing = _closing_braces(text)
    for match in reversed(matches):
        content = _box_content(text, match.end(), closing)
        if content is not None:
            return _clean(content)
    return None


def extract_answer(text: str, fallback: bool = True) -> str | None:
    """The final answer in a response, or None (an abstention).

    In order: the last ``\\boxed{...}``; then, with ``fallback`` (arithmetic, GSM8K, numeric and
    choice files), the rest of the line after the last ``####`` (GSM8K) where it starts with a number or is a
    lone option letter (not a markdown heading such as ``#### Step 2: Total``), else the last number in the
    text. Without ``fallback`` (MATH, math files: the authors' grader needs a boxed answer) a response
    with no complete ``\\boxed{}`` abstains.
    """
    boxed = last_boxed(text)
    if boxed is not None or not fallback:
        return boxed
    if "####" in text:
        after = _clean(text.rsplit("####", 1)[1].split("\n", 1)[0])
        if after is not None and _STATED_RE.match(after):
            return after
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


# ---------------------------------------------------------------------------------------------
# Normalisation

_TEXT_RE = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mathit|mbox)\s*\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PREFIX_RE = re.compile(r"^[A-Za-z]\w{0,2}=")  # "x=", "ans=", but only with a single "="
_REMOVE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\$", "\\%", "^{\\circ}", "^\\circ", "\\circ", "$", "%")


def normalize(answer: str, kind: GraderKind = "math") -> str:
    """Light, kind-aware normalisation used before comparing answers as strings or numbers.

    Thousands separators (``1,000``, LaTeX's ``1{,}000``) go, but not the comma of a list (``3, 125``). For
    ``numeric`` (GSM8K, arithmetic, numeric files: the answer is one number), also what surrounds the number a
    response states (:func:`_stated_number`)."""
    s = _TEXT_RE.sub(r"\1", answer).replace("{,}", ",")
    for token in _REMOVE:
        s = s.replace(token, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    if kind == "numeric":
        s = _stated_number(s)
    thousands = _THOUSANDS_RE.fullmatch(s.strip().removesuffix("."))  # before spaces go: "3, 125" is a list
    s = re.sub(r"\s+", "", s).removesuffix(".")
    if thousands:
        s = s.replace(",", "")
    if kind == "choice":
        return s.upper()
    if kind == "numeric":
        return s
    if s.count("=") == 1 and _PREFIX_RE.match(s):
        s = s.split("=", 1)[1]
    return s


#: The left side of an equation whose right side is the answer: arithmetic on numbers (``3 \\times 6``) or a short
#: name (``x``, ``ans``); not ``x^2`` (whose answer is x) nor inequalities or lists (``x<=5``, ``x=5, y=3``)
_EQUATION_LHS_RE = re.compile(r"\s*(?:[A-Za-z]\w{0,2}|(?:[\d.,+\-*/()\s=]|\\times|\\cdot|\\div)+)\s*")
#: An inequality: its "=" (``x<=5``, ``x != 5``, ``\\leq``) does not state a value
_RELATION_RE = re.compile(r"[<>!]|\\(?:neq?|leq?|geq?)(?![A-Za-z])")
#: A number, then one word: its unit (``18 dollars``, ``1,000 km``, ``1/2 cup``, ``\\frac{1}{2} cup``)
_UNIT_RE = re.compile(r"\s*([-+]?(?:\d[\d,]*(?:\.\d+)?(?:/\d+)?|\.\d+|\\frac\{\d+\}\{\d+\}))\s*([A-Za-z]{2,})\s*")
#: Words after a number that change its value: not units
_SCALES = {
    "hundred", "thousand", "million", "billion", "trillion", "dozen", "score", "half", "halve", "third", "quarter",
    "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "pi", "percent", "squared", "cubed",
}  # fmt: skip


def _stated_number(s: str) -> str:
    """The number a numeric answer states, where words or an equation surround it: a leading ``+``, the right side
    of an equation whose left side is arithmetic or a name (``3 \\times 6 = 18``, ``x = 18``) and a unit after the
    number (``18 dollars``, ``18 km``; not a scale such as ``2 million`` or ``2 dozen``, nor one letter: ``2x``).
    Anything else is left as it is (compared as text)."""
    if "=" in s and not _RELATION_RE.search(s):
        lhs, rhs = s.rsplit("=", 1)
        if _EQUATION_LHS_RE.fullmatch(lhs):
            s = rhs
    s = s.strip().removeprefix("+")
    unit = _UNIT_RE.fullmatch(s)
    if unit and unit.group(2).lower().removesuffix("s") not in _SCALES:
        return unit.group(1)
    return s


_DECIMAL = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,3})?"  # 1e-05: how a JSON number prints
_FRACTION_RES = (
    re.compile(rf"({_DECIMAL})/({_DECIMAL})"),
    re.compile(rf"\\frac\{{({_DECIMAL})\}}\{{({_DECIMAL})\}}"),
    re.compile(r"\\frac(\d)(\d)"),
)


def to_number(answer: str) -> Fraction | None:
    """``answer`` (already normalised) as an exact number: decimals, ``a/b``, ``\\frac{a}{b}``; else None.

    Exact (a :class:`~fractions.Fraction`), so numbers beyond a float's range stay distinct; a number
    with more digits than Python converts (``sys.get_int_max_str_digits``) is None (compared as text)."""
    negative = answer.startswith("-") and answer[1:2] == "\\"
    body = answer[1:] if negative else answer
    try:
        if re.fullmatch(_DECIMAL, body):
            value = Fraction(body)
        else:
            for pattern in _FRACTION_RES:
                m = pattern.fullmatch(body)
                if m:
                    denominator = Fraction(m.group(2))
                    if denominator == 0:
                        return None
                    value = Fraction(m.group(1)) / denominator
                    break
            else:
                return None
    except ValueError:  # too many digits to convert
        return None
    return -value if negative else value


def choice_letter(answer: str) -> str | None:
    """The option letter (A-E, upper case) in answers like ``B``, ``(b)``, ``B.``, ``(B) 42``."""
    text = _TEXT_RE.sub(r"\1", answer).strip().strip("$").strip()
    # a lower-case letter before more words is an article ("a mitochondrion"), not option A
    m = re.match(r"\(([A-Ea-e])\)|([A-E])(?:$|[).:\s])|([a-e])(?:$|[).:])", text)
    return next(g for g in m.groups() if g).upper() if m else None


# ---------------------------------------------------------------------------------------------
# Equivalence


def _numbers_equal(x: Fraction, y: Fraction) -> bool:
    """Two integers: equal exactly (1000000 is not 1000001). Otherwise equal within a relative tolerance of
    REL_TOL (absolute ABS_TOL), computed exactly (so 1000000.0001, a rounding's leftover, is 1000000)."""
    if x.denominator == 1 and y.denominator == 1:
        return x == y
    return abs(x - y) <= max(REL_TOL * max(abs(x), abs(y)), ABS_TOL)


def equivalent(a: str | None, b: str | None, kind: GraderKind = "numeric") -> bool:
    """Whether two extracted answers are the same answer under grader ``kind``.

    For ``math`` this may run a symbolic check in a worker process (at most
    :data:`MATH_VERIFY_TIMEOUT` seconds); it is safe to call from any thread.
    """
    if a is None or b is None:
        return False
    if kind == "choice":
        letter = choice_letter(a)
        return letter is not None and letter == choice_letter(b)
    if kind not in ("numeric", "math"):
        raise ValueError(f"unknown grader kind {kind!r}; expected 'numeric', 'math' or 'choice'")
    na, nb = normalize(a, kind), normalize(b, kind)
    if not na or not nb:
        return False
    if na == nb:
        return True
    x, y = to_number(na), to_number(nb)
    if x is not None and y is not None:
        return _numbers_equal(x, y)
    if kind == "numeric" or not (_symbolic_ok(na) and _symbolic_ok(nb)):
        return False
    # Symmetric, so cache under one order of the pair.
    return _symbolic_equal(*sorted((_for_math_verify(a), _for_math_verify(b))))


def _symbolic_ok(answer: str) -> bool:
    """Whether an answer is small enough for the symbolic check: math_verify reads a deeply nested
    answer as its innermost part (``\\frac{\\frac{...{1}{2}...}}`` as 1/2), so such answers are compared
    as text and numbers only."""
    depth = deepest = 0
    for c in answer:
        depth += (c == "{") - (c == "}")
        deepest = max(deepest, depth)
    return len(answer) <= MAX_SYMBOLIC_CHARS and deepest <= MAX_SYMBOLIC_DEPTH


def _for_math_verify(answer: str) -> str:
    answer = answer.strip().strip("$").strip()
    return answer if "\\boxed" in answer else f"\\boxed{{{answer}}}"


# The math_verify worker. math_verify's own timeouts use signal.alarm, which only works in the
# main thread, so they are disabled and each check runs in a worker process that is killed when it
# overruns. The worker is a plain `python -c` subprocess rather than a multiprocessing "spawn" child,
# which would re-run an unguarded user script (its __main__). One lock serialises checks, so a
# check's timeout never includes queueing behind another check.

_SRC_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the folder holding maft/
_lock = threading.Lock()


class _Worker:
    """A subprocess answering math_verify checks: one JSON ``[a, b]`` line in, one line out."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_SRC_ROOT, os.environ.get("PYTHONPATH")])))
        self.pid = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from maft.tasks.grading import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.replies: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.replies.put(line.strip())
        self.replies.put(None)  # the worker exited

    def check(self, a: str, b: str, timeout: float) -> bool:
        """The worker's verdict; raises TimeoutError (``queue.Empty``) or RuntimeError if it died."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([a, b]) + "\n")
        self.proc.stdin.flush()
        reply = self.replies.get(timeout=timeout)
        if reply is None:
            raise RuntimeError(f"the math_verify worker exited with code {self.proc.wait()}")
        return reply == "1"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:  # a write was pending into the dead worker's pipe
            pass


def _serve() -> None:
    """The worker's loop (runs in the subprocess)."""
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warnings
    replies, sys.stdout = sys.stdout, sys.stderr  # stray prints must not corrupt the replies
    for line in sys.stdin:
        a, b = json.loads(line)
        try:
            pa, pb = parse(a, parsing_timeout=None), parse(b, parsing_timeout=None)
            same = bool(pa and pb and (verify(pa, pb, timeout_seconds=None) or verify(pb, pa, timeout_seconds=None)))
        except Exception:  # math_verify/sympy failures count as "not equivalent"
            same = False
        replies.write("1\n" if same else "0\n")
        replies.flush()


_worker: _Worker | None = None
_atexit_registered = False


def _get_worker() -> _Worker:
    global _worker, _atexit_registered
    if _worker is not None and (_worker.pid != os.getpid() or _worker.proc.poll() is not None):
        _worker = None  # inherited through fork, or dead
    if _worker is None:
        worker = _Worker()
        try:  # startup (importing sympy) is not charged to the first check's timeout
            worker.check("1", "1", timeout=WORKER_STARTUP_TIMEOUT)
        except BaseException as e:
            worker.kill()
            if isinstance(e, queue.Empty):
                raise RuntimeError(f"the math_verify worker did not start within {WORKER_STARTUP_TIMEOUT} s") from None
            raise
        if not _atexit_registered:
            atexit.register(shutdown_worker)
            _atexit_registered = True
        _worker = worker
    return _worker


def shutdown_worker() -> None:
    """Stop the math_verify worker process (a later math check starts a new one)."""
    global _worker
    with _lock:
        if _worker is not None and _worker.pid == os.getpid():
            _worker.kill()
        _worker = None


@functools.lru_cache(maxsize=65536)
def _symbolic_equal(a: str, b: str) -> bool:
    """math_verify equivalence (either direction) under the hard timeout; a timeout counts as False."""
    global _worker
    with _lock:
        worker = _get_worker()
        try:
            return worker.check(a, b, timeout=MATH_VERIFY_TIMEOUT)
        except (queue.Empty, RuntimeError, OSError):  # overran (killed here) or died
            worker.kill()
            _worker = None
            return False
