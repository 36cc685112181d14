"""Pricing: exclusive token buckets, their cost, model lookup and override files
(spec: pricing.md). Dollar amounts are the spec's worked examples."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SNAPSHOT = ROOT.parent / "shared" / "data" / "model-prices.json"
sys.path.insert(0, str(ROOT))

from agent_session_monitor.errors import MonitorError  # noqa: E402
from agent_session_monitor.pricing.cost import (
    Buckets, Price, Tier, bucket_cost, cache_savings, usage_buckets,
)
from agent_session_monitor.pricing.table import PriceTable, load_price_table, provider_of, what_if

ENV = "AGENT_SESSION_MONITOR_PRICING"
GPT_4O = Price(input=2.5, output=10.0, cache_read=1.25)
O1 = Price(input=15.0, output=60.0, cache_read=7.5)
SONNET = Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)


def _no_env():
    """Tests must not see a price file the developer has set in their shell."""
    return mock.patch.dict(os.environ, {ENV: ""})


class PricingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        with _no_env():
            cls.table = load_price_table()

    def assertDollars(self, actual: float | None, expected: float) -> None:
        self.assertIsNotNone(actual)
        self.assertAlmostEqual(actual, expected, delta=1e-15)


class WorkedExamplesTest(PricingTest):
    def test_gpt4o_cached_input_is_discounted_not_counted_twice(self) -> None:
        buckets = usage_buckets(150, 100, cached_tokens=120)
        self.assertEqual(buckets, Buckets(input=30, cache_read=120, output=100))
        self.assertDollars(bucket_cost(buckets, GPT_4O), 0.001225)
        self.assertDollars(self.table.cost("gpt-4o", buckets), 0.001225)

    def test_o1_reasoning_inside_output_is_not_added_on_top(self) -> None:
        buckets = usage_buckets(100, 580, reasoning_tokens=500)
        self.assertEqual(buckets, Buckets(input=100, output=80, reasoning=500))
        self.assertDollars(bucket_cost(buckets, O1), 0.0363)
        self.assertDollars(self.table.cost("o1", buckets), 0.0363)

    def test_o1_reasoning_in_output_details_gives_the_same_cost(self) -> None:
        buckets = usage_buckets(100, 580, output_details={"reasoning_tokens": 500})
        self.assertDollars(self.table.cost("o1", buckets), 0.0363)

    def test_o1_output_smaller_than_reasoning_charges_both(self) -> None:
        for buckets in (usage_buckets(100, 80, reasoning_tokens=500),
                        usage_buckets(100, 80, output_details={"reasoning_tokens": 500})):
            self.assertEqual(buckets, Buckets(input=100, output=80, reasoning=500))
            self.assertDollars(self.table.cost("o1", buckets), 0.0363)

    def test_claude_sonnet_cache_reads_only_in_details(self) -> None:
        buckets = usage_buckets(12, 311, input_details={"cache_read_input_tokens": 20480,
                                                        "cache_creation_input_tokens": 0})
        self.assertEqual(buckets, Buckets(input=12, cache_read=20480, output=311))
        self.assertDollars(self.table.cost("claude-sonnet-4-20250514", buckets), 0.010845)
        self.assertDollars(bucket_cost(buckets, SONNET), 0.010845)

    def test_fixture_lines_priced_as_the_fixture_readme_says(self) -> None:
        from agent_session_monitor.ingest.parse import parse_line

        def cost_of(path: Path, line_no: int) -> float | None:
            raw = path.read_bytes().splitlines()[line_no - 1]
            req = parse_line(raw, "2026-02-01T00:00:00.000Z")
            buckets = usage_buckets(req.input_token, req.output_token, req.cached_tokens,
                                    req.reasoning_tokens, req.input_details, req.output_details)
            return self.table.cost(req.ai.get("model"), buckets)

        self.assertDollars(cost_of(DATA / "higress-realistic.log", 5), 0.010845)
        self.assertDollars(cost_of(DATA / "skill-example-access-v2.log", 1), 0.001225)
        self.assertDollars(cost_of(DATA / "skill-example-access-v2.log", 3), 0.0363)
        self.assertIsNone(cost_of(DATA / "higress-realistic.log", 7))  # qwen3-max
        self.assertIsNone(cost_of(DATA / "higress-realistic.log", 8))  # HTML model name


class UsageShapesTest(unittest.TestCase):
    def test_openai_cached_tokens_in_input_details(self) -> None:
        self.assertEqual(usage_buckets(150, 100, input_details={"cached_tokens": 120}),
                         Buckets(input=30, cache_read=120, output=100))

    def test_zero_cached_tokens_falls_through_to_details(self) -> None:
        self.assertEqual(usage_buckets(150, 100, 0, 0, {"cached_tokens": 120}).cache_read, 120)

    def test_openai_cache_read_larger_than_input_means_input_excludes_it(self) -> None:
        self.assertEqual(usage_buckets(100, 200, cached_tokens=200),
                         Buckets(input=100, cache_read=200, output=200))

    def test_anthropic_cache_write_is_its_own_bucket(self) -> None:
        buckets = usage_buckets(12, 50, input_details={"cache_read_input_tokens": 100,
                                                       "cache_creation_input_tokens": 2000})
        self.assertEqual(buckets, Buckets(input=12, cache_read=100, cache_write=2000, output=50))
        self.assertAlmostEqual(bucket_cost(buckets, SONNET),
                               (12 * 3 + 100 * 0.3 + 2000 * 3.75 + 50 * 15) / 1e6, delta=1e-15)

    def test_anthropic_cache_creation_split_into_5m_and_1h(self) -> None:
        details = {"cache_read_input_tokens": 0, "cache_creation_input_tokens": 300,
                   "cache_creation": {"ephemeral_1h_input_tokens": 100,
                                      "ephemeral_5m_input_tokens": 200}}
        buckets = usage_buckets(10, 0, input_details=details)
        self.assertEqual(buckets, Buckets(input=10, cache_write=200, cache_write_1h=100))
        price = Price(input=3.0, output=15.0, cache_write=3.75, cache_write_1h=6.0)
        self.assertAlmostEqual(bucket_cost(buckets, price),
                               (10 * 3 + 200 * 3.75 + 100 * 6) / 1e6, delta=1e-15)

    def test_cache_write_1h_falls_back_to_cache_write_then_input(self) -> None:
        buckets = Buckets(cache_write_1h=1_000_000)
        self.assertAlmostEqual(bucket_cost(buckets, SONNET), 3.75)
        self.assertAlmostEqual(bucket_cost(buckets, GPT_4O), 2.5)

    def test_cache_creation_split_missing_part_stays_5m(self) -> None:
        details = {"cache_creation_input_tokens": 300,
                   "cache_creation": {"ephemeral_1h_input_tokens": 100}}
        buckets = usage_buckets(10, 0, input_details=details)
        self.assertEqual((buckets.cache_write, buckets.cache_write_1h), (200, 100))

    def test_without_split_all_cache_writes_are_5m(self) -> None:
        buckets = usage_buckets(10, 0, input_details={"cache_creation_input_tokens": 300})
        self.assertEqual((buckets.cache_write, buckets.cache_write_1h), (300, 0))

    def test_gemini_thoughts_are_outside_output(self) -> None:
        buckets = usage_buckets(40, 100, output_details={"thoughts_token_count": 50})
        self.assertEqual(buckets, Buckets(input=40, output=100, reasoning=50))

    def test_gemini_thoughts_copied_to_reasoning_tokens_keep_their_meaning(self) -> None:
        buckets = usage_buckets(40, 100, reasoning_tokens=50,
                                output_details={"thoughts_token_count": 50})
        self.assertEqual(buckets, Buckets(input=40, output=100, reasoning=50))

    def test_reasoning_billed_apart_uses_its_own_price(self) -> None:
        price = Price(input=0.4, output=1.2, reasoning=4.0)  # dashscope/qwen-plus-2025-07-14
        buckets = usage_buckets(0, 1000, reasoning_tokens=600)
        self.assertAlmostEqual(bucket_cost(buckets, price), (400 * 1.2 + 600 * 4.0) / 1e6,
                               delta=1e-15)

    def test_details_junk_counts_as_zero_and_numeric_strings_count(self) -> None:
        for junk in (True, -5, "abc", 1.5, None, [3], {"n": 3}, "", "-3", "１２"):
            with self.subTest(junk=junk):
                self.assertEqual(usage_buckets(150, 10, input_details={"cached_tokens": junk}),
                                 Buckets(input=150, output=10))
        self.assertEqual(usage_buckets(150, 10, input_details={"cached_tokens": "120"}),
                         Buckets(input=30, cache_read=120, output=10))

    def test_details_that_are_not_objects_are_ignored(self) -> None:
        self.assertEqual(usage_buckets(5, 6, None, None, "junk", ["x"]),  # type: ignore[arg-type]
                         Buckets(input=5, output=6))

    def test_no_bucket_is_ever_negative_with_absurd_inputs(self) -> None:
        cases = [
            dict(input_token=-5, output_token=-3, cached_tokens=-1, reasoning_tokens=-9),
            dict(input_token=10, output_token=0, cached_tokens=10**12, reasoning_tokens=10**12),
            dict(input_token=5, output_token=5, input_details={
                "cached_tokens": 4, "cache_creation": {"ephemeral_1h_input_tokens": 10**9}}),
            dict(input_token=1, output_token=1, input_details={
                "cache_creation_input_tokens": -7, "cache_read_input_tokens": -8,
                "cache_creation": {"ephemeral_1h_input_tokens": -1,
                                   "ephemeral_5m_input_tokens": "x"}},
                 output_details={"reasoning_tokens": -4, "thoughts_token_count": True}),
        ]
        for case in cases:
            with self.subTest(case=case):
                buckets = usage_buckets(**case)
                self.assertTrue(all(v >= 0 for v in buckets.as_dict().values()), buckets)
                self.assertGreaterEqual(bucket_cost(buckets, SONNET), 0)


class BucketsTest(unittest.TestCase):
    def test_buckets_round_trip_sum_and_prompt_size(self) -> None:
        a = Buckets(1, 2, 3, 4, 5, 6)
        self.assertEqual(Buckets.from_dict(a.as_dict()), a)
        self.assertEqual(a.prompt_tokens, 10)
        self.assertEqual(a + Buckets(input=1, reasoning=1), Buckets(2, 2, 3, 4, 5, 7))
        self.assertEqual(sum([a, a], Buckets()), Buckets(2, 4, 6, 8, 10, 12))

    def test_from_dict_missing_or_junk_keys_are_zero(self) -> None:
        self.assertEqual(Buckets.from_dict({"input": 7, "output": "x", "reasoning": True}),
                         Buckets(input=7))
        self.assertEqual(Buckets.from_dict({}), Buckets())


class TiersTest(PricingTest):
    def test_tier_applies_only_above_its_threshold(self) -> None:
        found = self.table.lookup("gemini-2.5-pro")
        self.assertEqual(found[0], "gemini/gemini-2.5-pro")
        at = Buckets(input=200_000, output=1_000_000)
        above = Buckets(input=200_001, output=1_000_000)
        self.assertAlmostEqual(bucket_cost(at, found[1]), 200_000 * 1.25 / 1e6 + 10.0)
        self.assertAlmostEqual(bucket_cost(above, found[1]), 200_001 * 2.5 / 1e6 + 15.0)

    def test_tier_chosen_by_whole_prompt_including_cache_reads(self) -> None:
        price = self.table.lookup("gemini-2.5-pro")[1]
        buckets = Buckets(input=1, cache_read=200_000)
        self.assertAlmostEqual(bucket_cost(buckets, price), (2.5 + 200_000 * 0.25) / 1e6)

    def test_tier_field_not_set_falls_back_to_base_price(self) -> None:
        price = Price(input=1.0, output=2.0, cache_read=0.1, cache_write=1.25,
                      tiers=(Tier(1000, input=4.0, output=8.0),))
        buckets = Buckets(input=1000, cache_read=1000, cache_write=1000, output=1000)
        self.assertAlmostEqual(bucket_cost(buckets, price),
                               (1000 * 4.0 + 1000 * 0.1 + 1000 * 1.25 + 1000 * 8.0) / 1e6)

    def test_tier_without_cache_price_and_base_without_falls_back_to_tier_input(self) -> None:
        price = self.table.lookup("gemini-2.5-computer-use-preview-10-2025")[1]
        self.assertIsNone(price.cache_read)
        buckets = Buckets(input=100_000, cache_read=150_000)
        self.assertAlmostEqual(bucket_cost(buckets, price), 250_000 * 2.5 / 1e6)

    def test_highest_passed_tier_wins_whatever_the_file_order(self) -> None:
        table = _table_from({"m": {"input": 1, "output": 1, "tiers": [
            {"above_input_tokens": 2000, "input": 3}, {"above_input_tokens": 1000, "input": 2}]}})
        price = table.models["m"]
        self.assertEqual([t.above_input_tokens for t in price.tiers], [1000, 2000])
        for prompt, rate in ((1000, 1), (1001, 2), (2000, 2), (2001, 3)):
            self.assertAlmostEqual(bucket_cost(Buckets(input=prompt), price), prompt * rate / 1e6)


class LookupTest(PricingTest):
    def key(self, model: str | None) -> str | None:
        found = self.table.lookup(model)  # type: ignore[arg-type]
        return found[0] if found else None

    def test_exact_names_match_their_own_entry(self) -> None:
        for name in ("gpt-4o-2024-08-06", "claude-sonnet-4-20250514", "gpt-4o-mini",
                     "dashscope/qwen-max", "qwencloud/qwen-max", "o1"):
            self.assertEqual(self.key(name), name)

    def test_case_insensitive_match(self) -> None:
        self.assertEqual(self.key("GPT-4"), "gpt-4")
        self.assertEqual(self.key("Claude-Sonnet-4-20250514"), "claude-sonnet-4-20250514")

    def test_provider_prefix_stripped_from_the_logged_name(self) -> None:
        self.assertEqual(self.key("openai/gpt-4o"), "gpt-4o")
        self.assertEqual(self.key("OpenRouter/openai/GPT-4o-mini"), "gpt-4o-mini")

    def test_bare_name_matches_a_prefixed_table_key(self) -> None:
        self.assertEqual(self.key("DeepSeek-R1"), "deepseek/deepseek-r1")
        self.assertEqual(self.key("Qwen-Max"), "dashscope/qwen-max")
        self.assertEqual(self.key("minimax-m2"), "minimax/MiniMax-M2")

    def test_ambiguous_bare_name_prefers_the_first_party_provider(self) -> None:
        self.assertEqual(self.key("glm-5.2"), "zai/glm-5.2")           # not dashscope's
        self.assertEqual(self.key("kimi-k2.7-code"), "moonshot/kimi-k2.7-code")
        self.assertEqual(self.key("qwq-plus"), "dashscope/qwq-plus")   # not qwencloud's
        self.assertEqual(self.key("dashscope/deepseek-r1"), "deepseek/deepseek-r1")

    def test_ambiguous_bare_name_without_first_party_is_lexicographic(self) -> None:
        self.assertEqual(self.key("deepseek-v4-flash-0731"), "dashscope/deepseek-v4-flash-0731")

    def test_bare_name_resolution_does_not_depend_on_table_order(self) -> None:
        items = list(self.table.models.items())
        reversed_table = PriceTable(dict(reversed(items)), self.table.aliases)
        for name in ("glm-5.2", "qwen-max", "deepseek-v4-flash-0731", "deepseek-chat"):
            self.assertEqual(reversed_table.lookup(name)[0], self.key(name))

    def test_date_and_version_suffixes_stripped(self) -> None:
        self.assertEqual(self.key("gpt-4o-2099-01-01"), "gpt-4o")
        self.assertEqual(self.key("gpt-4o-mini-20990101"), "gpt-4o-mini")
        self.assertEqual(self.key("qwen-plus-2025-09-11"), "dashscope/qwen-plus")
        self.assertEqual(self.key("qwencloud/qwen-plus-2025-09-11"), "qwencloud/qwen-plus")
        self.assertEqual(self.key("gpt-5-mini-250807"), "gpt-5-mini")
        self.assertEqual(self.key("gpt-4.1-latest"), "gpt-4.1")

    def test_four_digit_suffix_is_a_different_model_not_stripped(self) -> None:
        self.assertIsNone(self.key("gpt-4-0314"))
        self.assertIsNone(self.key("gpt-3.5-turbo-0301"))

    def test_aliases_for_undated_anthropic_names(self) -> None:
        expected = {"claude-sonnet-4": "claude-sonnet-4-20250514",
                    "claude-opus-4": "claude-opus-4-20250514",
                    "claude-3-5-sonnet": "claude-3-5-sonnet-20241022",
                    "claude-3-5-haiku": "claude-3-5-haiku-20241022",
                    "claude-3-7-sonnet": "claude-3-7-sonnet-20250219"}
        for alias, target in expected.items():
            with self.subTest(alias=alias):
                self.assertEqual(self.key(alias), target)
                self.assertEqual(self.key(alias + "-latest"), target)
                self.assertEqual(self.key("anthropic/" + alias.upper()), target)

    def test_aliases_apply_after_suffix_normalisation(self) -> None:
        self.assertEqual(self.key("claude-sonnet-4@20250514"), "claude-sonnet-4-20250514")
        self.assertEqual(self.key("claude-3-5-sonnet@20991231"), "claude-3-5-sonnet-20241022")

    def test_mini_model_never_gets_the_bigger_models_price(self) -> None:
        key, price = self.table.lookup("gpt-4o-mini")
        self.assertEqual(key, "gpt-4o-mini")
        self.assertNotEqual(price, self.table.models["gpt-4o"])
        self.assertEqual(self.key("gpt-4o-mini-2099-01-01"), "gpt-4o-mini")

    def test_unknown_models_are_unpriced_never_a_family_guess(self) -> None:
        for name in ("Qwen3-rerank", "qwen3-max", "<img src=x onerror=alert(1)>", "o1-mini",
                     "gpt-4o-mini-foo", "my-gpt-4o", "gpt", "claude", "claude-sonnet",
                     "../../etc/passwd", "gpt-4o ", " ", "/", "-latest"):
            with self.subTest(name=name):
                self.assertIsNone(self.table.lookup(name))
                self.assertIsNone(self.table.cost(name, Buckets(input=1000, output=1000)))

    def test_no_model_costs_none_not_zero(self) -> None:
        for model in (None, ""):
            self.assertIsNone(self.table.cost(model, Buckets(input=10, output=10)))

    def test_lookups_are_memoised_and_bounded(self) -> None:
        table = PriceTable(dict(self.table.models), dict(self.table.aliases))
        self.assertIs(table.lookup("Qwen-Max"), table.lookup("Qwen-Max"))
        for i in range(10_000):
            table.lookup(f"hostile-model-{i}")
        self.assertLessEqual(len(table._memo), 4096)
        self.assertEqual(table.lookup("Qwen-Max")[0], "dashscope/qwen-max")


class BundledTableTest(PricingTest):
    def test_bundled_table_names_source_and_date(self) -> None:
        self.assertIn("LiteLLM", self.table.source)
        self.assertRegex(self.table.source, r"\d{4}-\d{2}-\d{2}")
        self.assertIsNone(self.table.override_path)
        self.assertEqual(self.table.priced_models(), sorted(self.table.models))

    def test_every_alias_points_at_a_bundled_model(self) -> None:
        for alias, target in self.table.aliases.items():
            self.assertIn(target, self.table.models, alias)
            self.assertNotIn(alias, self.table.models)

    @unittest.skipUnless(SNAPSHOT.is_file(), "shared snapshot not present")
    def test_bundled_table_has_every_snapshot_model_at_its_price(self) -> None:
        snapshot = json.loads(SNAPSHOT.read_text(encoding="utf-8"))["models"]
        placeholders = {n for n, e in snapshot.items()
                        if e["provider"] == "volcengine" and not e["input"] and not e["output"]}
        self.assertEqual(set(self.table.models), set(snapshot) - placeholders)
        for name in placeholders:   # $0 placeholders of paid models: unpriced, never free
            self.assertIsNone(self.table.lookup(name), name)
        for name, entry in snapshot.items():
            if name in placeholders:
                continue
            price = self.table.models[name]
            self.assertEqual((price.input, price.output, price.provider),
                             (entry["input"], entry["output"], entry["provider"]), name)
            self.assertEqual(price.cache_read, entry.get("cache_read"), name)
            self.assertEqual(len(price.tiers), len(entry.get("tiers", [])), name)

    @unittest.skipUnless(SNAPSHOT.is_file(), "shared snapshot not present")
    def test_build_script_reproduces_the_bundled_table(self) -> None:
        sys.path.insert(0, str(ROOT / "tools"))
        import build_prices

        bundled = json.loads((ROOT / "agent_session_monitor" / "pricing" / "prices.json").read_text())
        tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, tmp, True)
        with mock.patch("sys.stdout"):
            code = build_prices.main([str(SNAPSHOT), "--out", str(tmp / "p.json"),
                                      "--date", bundled["_date"]])
        self.assertEqual(code, 0)
        self.assertEqual(json.loads((tmp / "p.json").read_text()), bundled)


def _table_from(overrides: dict) -> PriceTable:
    tmp = Path(tempfile.mkdtemp())
    try:
        path = tmp / "prices.json"
        path.write_text(json.dumps(overrides), encoding="utf-8")
        with _no_env():
            return load_price_table(str(path))
    finally:
        shutil.rmtree(tmp, True)


class OverrideTest(PricingTest):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def write(self, content: object, name: str = "prices.json") -> str:
        path = self.tmp / name
        text = content if isinstance(content, str) else json.dumps(content)
        path.write_text(text, encoding="utf-8")
        return str(path)

    def test_override_wins_per_model_and_others_keep_bundled_prices(self) -> None:
        path = self.write({"gpt-4o": {"input": 1.0, "output": 2.0},
                           "my-model": {"input": 1.0, "output": 2.0, "cache_read": 0.1}})
        with _no_env():
            table = load_price_table(path)
        self.assertEqual(table.lookup("gpt-4o")[1], Price(input=1.0, output=2.0))
        self.assertEqual(table.lookup("my-model")[1], Price(1.0, 2.0, cache_read=0.1))
        self.assertEqual(table.lookup("gpt-4o-mini"), self.table.lookup("gpt-4o-mini"))
        self.assertEqual(table.override_path, path)
        self.assertTrue(table.source.endswith(f" + overrides from {path}"), table.source)
        self.assertTrue(table.source.startswith(self.table.source))

    def test_override_replaces_the_whole_entry(self) -> None:
        # The bundled gpt-4o has a cache_read price; the override has none, so cache
        # reads now cost the override's input price.
        table = _table_from({"gpt-4o": {"input": 1.0, "output": 2.0}})
        self.assertAlmostEqual(table.cost("gpt-4o", Buckets(cache_read=1_000_000)), 1.0)

    def test_override_replaces_bundled_entry_written_in_another_case(self) -> None:
        table = _table_from({"GPT-4o": {"input": 1.0, "output": 2.0}})
        self.assertEqual(table.lookup("gpt-4o")[0], "GPT-4o")
        self.assertNotIn("gpt-4o", table.models)

    def test_override_can_price_a_model_the_snapshot_lacks(self) -> None:
        self.assertIsNone(self.table.lookup("qwen3-max"))
        table = _table_from({"qwen3-max": {"input": 1.2, "output": 6.0}})
        self.assertAlmostEqual(table.cost("Qwen3-Max", Buckets(input=1000, output=1000)),
                               0.0072)

    def test_wrapped_shape_with_underscore_keys_and_aliases(self) -> None:
        path = self.write({"_about": "mine", "models": {
            "_comment": "ignored", "my-model": {"provider": "me", "input": 1, "output": 2,
                                                "note": "kept out", "max_input_tokens": 9}},
            "aliases": {"mine": "my-model"}})
        with _no_env():
            table = load_price_table(path)
        self.assertEqual(table.lookup("mine")[0], "my-model")
        self.assertEqual(provider_of("my-model", table.models["my-model"]), "me")
        self.assertNotIn("_comment", table.models)

    def test_flat_shape_ignores_underscore_keys(self) -> None:
        table = _table_from({"_about": "x", "m": {"input": 1, "output": 1}})
        self.assertIn("m", table.models)
        self.assertNotIn("_about", table.models)

    @unittest.skipUnless(SNAPSHOT.is_file(), "shared snapshot not present")
    def test_shared_snapshot_itself_is_a_valid_override(self) -> None:
        with _no_env():
            table = load_price_table(str(SNAPSHOT))
        self.assertEqual(len(table.models), len(self.table.models) + 3)  # + the $0 placeholders

    def test_environment_variable_names_the_override_file(self) -> None:
        path = self.write({"my-model": {"input": 1, "output": 2}})
        with mock.patch.dict(os.environ, {ENV: path}):
            table = load_price_table()
        self.assertIsNotNone(table.lookup("my-model"))
        self.assertEqual(table.override_path, path)

    def test_explicit_override_path_beats_the_environment(self) -> None:
        env_path = self.write({"env-model": {"input": 1, "output": 2}}, "env.json")
        flag_path = self.write({"flag-model": {"input": 1, "output": 2}}, "flag.json")
        with mock.patch.dict(os.environ, {ENV: env_path}):
            table = load_price_table(flag_path)
        self.assertIsNotNone(table.lookup("flag-model"))
        self.assertIsNone(table.lookup("env-model"))

    def test_empty_environment_variable_means_bundled_only(self) -> None:
        with _no_env():
            table = load_price_table()
        self.assertIsNone(table.override_path)
        self.assertNotIn("overrides", table.source)

    def assertBadFile(self, path: str, *fragments: str) -> None:
        with _no_env(), self.assertRaises(MonitorError) as caught:
            load_price_table(path)
        message = str(caught.exception)
        self.assertEqual(caught.exception.exit_code, 2)
        self.assertTrue(message.startswith(f"price file {path}: "), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_missing_override_file(self) -> None:
        self.assertBadFile(str(self.tmp / "nope.json"), "not found", "--pricing")

    def test_missing_override_file_named_by_environment(self) -> None:
        missing = str(self.tmp / "nope.json")
        with mock.patch.dict(os.environ, {ENV: missing}), self.assertRaises(MonitorError) as c:
            load_price_table()
        self.assertIn(missing, str(c.exception))
        self.assertEqual(c.exception.exit_code, 2)

    def test_unreadable_override_file(self) -> None:
        self.assertBadFile(str(self.tmp), "cannot read")  # a directory

    def test_override_file_not_json(self) -> None:
        self.assertBadFile(self.write("{'gpt-4o': 1}"), "not valid JSON", "line 1")
        self.assertBadFile(self.write(""), "not valid JSON")

    def test_override_file_not_utf8(self) -> None:
        path = self.tmp / "latin1.json"
        path.write_bytes(b'{"caf\xe9": {"input": 1, "output": 1}}')
        self.assertBadFile(str(path), "not UTF-8")

    def test_override_file_not_an_object(self) -> None:
        self.assertBadFile(self.write([1, 2]), "must be a JSON object", "an array")
        self.assertBadFile(self.write("42"), "must be a JSON object")

    def test_override_entry_not_an_object(self) -> None:
        self.assertBadFile(self.write({"foo": 1.5}), 'model "foo"', "must be an object")

    def test_override_entry_missing_input_or_output(self) -> None:
        self.assertBadFile(self.write({"foo": {"output": 1}}), 'model "foo": "input" is missing')
        self.assertBadFile(self.write({"foo": {"input": 1}}), 'model "foo": "output" is missing')

    def test_override_price_not_a_finite_non_negative_number(self) -> None:
        for bad in ('-1', '"1.0"', 'true', 'null', 'NaN', 'Infinity', '1e400', '[1]'):
            with self.subTest(bad=bad):
                path = self.write('{"foo": {"input": %s, "output": 1}}' % bad)
                self.assertBadFile(path, 'model "foo": "input" must be a non-negative number')

    def test_override_unknown_field_is_refused_not_ignored(self) -> None:
        path = self.write({"foo": {"input": 1, "output": 1, "cache_reed": 0.1}})
        self.assertBadFile(path, 'model "foo"', 'unknown field "cache_reed"')

    def test_override_bad_tiers(self) -> None:
        for tiers, fragment in ((5, '"tiers" must be an array'),
                                ([{"input": 1}], "above_input_tokens"),
                                ([{"above_input_tokens": -1}], "above_input_tokens"),
                                ([{"above_input_tokens": 10, "output": -2}], '"output"'),
                                (["x"], "a tier must be an object")):
            with self.subTest(tiers=tiers):
                path = self.write({"foo": {"input": 1, "output": 1, "tiers": tiers}})
                self.assertBadFile(path, 'model "foo"', fragment)

    def test_override_bad_provider_and_empty_name(self) -> None:
        self.assertBadFile(self.write({"foo": {"input": 1, "output": 1, "provider": 3}}),
                           '"provider" must be a string')
        self.assertBadFile(self.write({"": {"input": 1, "output": 1}}), "empty")

    def test_override_bad_aliases(self) -> None:
        self.assertBadFile(self.write({"models": {}, "aliases": {"a": 1}}), '"aliases"')

    def test_hostile_model_name_in_error_stays_one_line(self) -> None:
        self.assertBadFile(self.write({"a\nb": {"input": -1, "output": 1}}), 'model "a\\nb"')


class WhatIfAndSavingsTest(PricingTest):
    def test_what_if_cheapest_first(self) -> None:
        buckets = Buckets(input=1000, cache_read=5000, output=500)
        result = what_if(buckets, self.table, ["gpt-4o", "gpt-4o-mini", "o1", "claude-sonnet-4"])
        # Claude's cheap cache reads beat gpt-4o here: 0.012000 vs 0.013750.
        self.assertEqual([name for name, _ in result],
                         ["gpt-4o-mini", "claude-sonnet-4", "gpt-4o", "o1"])
        self.assertDollars(result[0][1], (1000 * 0.15 + 5000 * 0.075 + 500 * 0.6) / 1e6)
        costs = [cost for _, cost in result]
        self.assertEqual(costs, sorted(costs))

    def test_what_if_leaves_out_unpriced_models(self) -> None:
        result = what_if(Buckets(input=10), self.table, ["qwen3-max", "gpt-4o"])
        self.assertEqual([name for name, _ in result], ["gpt-4o"])

    def test_what_if_defaults_to_every_priced_model_ties_by_name(self) -> None:
        result = what_if(Buckets(input=1000, output=1000), self.table)
        self.assertEqual(len(result), len(self.table.models))
        self.assertEqual(result, sorted(result, key=lambda nc: (nc[1], nc[0])))

    def test_cache_savings_versus_full_input_price(self) -> None:
        buckets = usage_buckets(150, 100, cached_tokens=120)
        self.assertDollars(cache_savings(buckets, GPT_4O), 120 * (2.5 - 1.25) / 1e6)
        self.assertEqual(cache_savings(Buckets(input=100, output=100), GPT_4O), 0)

    def test_cache_savings_negative_when_writes_cost_more_than_reads_saved(self) -> None:
        buckets = Buckets(input=10, cache_write=1000, output=10)
        self.assertDollars(cache_savings(buckets, SONNET), -1000 * (3.75 - 3.0) / 1e6)

    def test_cache_savings_uses_the_tier_of_the_request(self) -> None:
        price = self.table.lookup("gemini-2.5-pro")[1]
        buckets = Buckets(input=1, cache_read=300_000)
        self.assertDollars(cache_savings(buckets, price), 300_000 * (2.5 - 0.25) / 1e6)


class ProviderTest(PricingTest):
    def test_provider_of_table_entry_prefix_or_vendor(self) -> None:
        self.assertEqual(provider_of("gpt-4o", self.table.models["gpt-4o"]), "openai")
        name = "volcengine/doubao-seed-2-1-pro-260915"
        self.assertEqual(provider_of(name, self.table.models[name]), "volcengine")
        bare = Price(1.0, 1.0)
        self.assertEqual(provider_of("acme/model-x", bare), "acme")
        self.assertEqual(provider_of("claude-next", bare), "anthropic")
        self.assertEqual(provider_of("my-model", bare), "unknown")


if __name__ == "__main__":
    unittest.main()
