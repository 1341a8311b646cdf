"""The reviews task (``data=reviews``): a real instruction-tuned LM finishes movie reviews.

The DPO paper's controlled-sentiment task (Rafailov et al. 2023, sec. 6.1: GPT-2 continues IMDb review
prefixes, a sentiment classifier is the gold reward) for a chat model: each prompt is one user turn asking
it to write the rest of a review that opens with a few words (the world's 2-8 word review openings), and
the gold reward is VADER on the reply. Free text has no grammar to check, so hacking shows instead in the
reply's per-token NLL under the reference and its rate of repeated 3-grams; a sentiment scorer zoo never
trains on (TextBlob's lexicon) checks that a gain in VADER is a gain in sentiment and not in VADER's quirks.
"""
