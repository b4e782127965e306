"""The collapsed lines written from a StackTrie equal the sorted text of every line."""

from __future__ import annotations

import io
import random

from branchtrace.reporters.collapsed import StackTrie

# names that extend each other with characters before, between and after " " and ";"
NAMES = ["f", "f.cold", "f x", "f x;", "f  ", "f!", "f\t", "g", "f:", "f(int)", "f1", "F",
         "thread 1;f", "thread 1;f.cold", "thread 12;g", ""]


def _naive(trees: list[tuple[list[int], list[str], list[int]]]) -> str:
    lines = []
    for parent, name, weight in trees:
        lines += [f"{_stack(parent, name, i)} {w}\n" for i, w in enumerate(weight) if w]
    return "".join(sorted(lines))


def _stack(parent: list[int], name: list[str], i: int) -> str:
    return f"{_stack(parent, name, parent[i])};{name[i]}" if parent[i] >= 0 else name[i]


def _random_tree(rng: random.Random, size: int, names: list[str] = NAMES
                 ) -> tuple[list[int], list[str], list[int]]:
    parent, name, weight = [], [], []
    for i in range(size):
        parent.append(rng.randrange(-1, i) if i and rng.random() > 0.1 else -1)
        name.append(rng.choice(names))
        weight.append(rng.choice([0, 1, 2, 9, 10, 11, 100, rng.randrange(1 << 40)]))
    # a node may come before its parent (a tree's bottom lowered under a new frame)
    order = list(range(size))
    rng.shuffle(order)
    at = {old: new for new, old in enumerate(order)}
    return ([at[parent[o]] if parent[o] >= 0 else -1 for o in order],
            [name[o] for o in order], [weight[o] for o in order])


def _written(trees: list[tuple[list[int], list[str], list[int]]], batch: int) -> str:
    trie = StackTrie()
    for parent, name, weight in trees:
        trie.add_tree(parent, [trie.name(n) for n in name], weight)
    out = io.StringIO()
    trie.write(out, batch=batch)
    return out.getvalue()


def test_trie_lines_sort_as_strings() -> None:
    rng = random.Random(13)
    for case in range(300):
        trees = [_random_tree(rng, rng.randrange(1, 60)) for _ in range(rng.randrange(1, 4))]
        assert _written(trees, batch=rng.choice([1, 50, 1 << 20])) == _naive(trees), case


def test_same_stack_twice_keeps_both_lines() -> None:
    # two functions of one name under one parent: one stack, two lines (as before)
    trees = [([-1, 0, 0], ["main", "dup", "dup"], [1, 10, 9])]
    assert _written(trees, 1 << 20) == "main 1\nmain;dup 10\nmain;dup 9\n"


def test_empty() -> None:
    assert _written([], 1) == ""


def test_summed_trie_adds_the_same_stack() -> None:
    rng = random.Random(7)
    # (a name holds no ";": the stacks of two nodes are then equal only if their names are)
    names = [n for n in NAMES if ";" not in n]
    for case in range(100):
        trees = [_random_tree(rng, rng.randrange(1, 40), names)
                 for _ in range(rng.randrange(1, 4))]
        trie = StackTrie(summed=True)
        for parent, name, weight in trees:
            trie.add_tree(parent, [trie.name(n) for n in name], weight)
        out = io.StringIO()
        trie.write(out)
        sums: dict[str, int] = {}
        for line in _naive(trees).splitlines():
            stack, _, w = line.rpartition(" ")
            sums[stack] = sums.get(stack, 0) + int(w)
        assert out.getvalue() == "".join(sorted(f"{s} {w}\n" for s, w in sums.items())), case
