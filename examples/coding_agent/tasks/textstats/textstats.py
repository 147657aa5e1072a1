"""Small text statistics used by the report generator."""


def words(text):
    """The words of `text`, lower-cased, without surrounding punctuation."""
    out = []
    for raw in text.split():
        word = raw.strip(".,;:!?\"'()").lower()
        if word:
            out.append(word)
    return out


def word_count(text):
    """How many words `text` has."""
    return len(words(text))


def average_word_length(text):
    """Mean length of the words in `text` (0.0 for empty text)."""
    found = words(text)
    if not found:
        return 0.0
    return sum(len(w) for w in found) / len(found)


def top_words(text, n=3):
    """The `n` most frequent words, most frequent first; ties keep first-seen order."""
    counts = {}
    for word in words(text):
        counts[word] = counts.get(word, 0) + 1
    ranked = sorted(counts, key=lambda w: counts[w])
    return ranked[:n]
