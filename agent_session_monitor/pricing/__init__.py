"""Prices and cost: the price table, a round's token buckets and their cost in USD.
Takes logged token counts and a model name; gives buckets and dollars (spec: pricing.md)."""
