"""An LLM judge: a model served behind an OpenAI-compatible API says whether an answer is
correct given the reference. A second opinion beside exact match, which misses paraphrases."""

from __future__ import annotations

import os

from tailor.errors import TailorError

PROMPT = ("Question: {question}\nReference answer: {reference}\nAnswer to grade: {output}\n\n"
          "Is the answer correct given the reference? Reply with one word: yes or no.")


class Judge:
    def __init__(self, url: str, model: str, api_key: str | None = None, timeout: float = 120):
        try:
            import openai
        except ImportError:
            raise TailorError("the LLM judge talks to its server with the openai package: "
                              "pip install openai (or pip install 'tailor[test]').") from None

        # A local tailor server needs no key; OPENAI_API_KEY is used when set (a hosted judge).
        key = api_key or os.environ.get("OPENAI_API_KEY") or "none"
        self.client = openai.OpenAI(base_url=url, api_key=key, max_retries=1, timeout=timeout)
        self.model = model

    def verdict(self, question: str, reference: str, output: str) -> bool | None:
        """True (yes), False (no), or None when the judge said something else."""
        import openai

        prompt = PROMPT.format(question=question, reference=reference, output=output or "(no answer)")
        try:
            reply = self.client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=4)
        except openai.APIConnectionError as exc:
            raise TailorError(f"--judge-url {self.client.base_url}: cannot connect ({exc}). Start the judge's "
                              "server (e.g. tailor serve MODEL) or fix the URL.") from exc
        except openai.APIStatusError as exc:
            raise TailorError(f"the judge server answered {exc.status_code}: {exc.message} "
                              f"(is {self.model!r} a model it serves?)") from exc
        return parse_verdict(reply.choices[0].message.content or "")


def parse_verdict(text: str) -> bool | None:
    """The first word decides: yes/true/correct -> True, no/false/incorrect -> False."""
    words = text.strip().lower().replace(".", " ").replace(",", " ").replace("!", " ").split()
    if not words:
        return None
    first = words[0].strip("\"'*:")
    if first in ("yes", "true", "correct"):
        return True
    if first in ("no", "false", "incorrect", "wrong"):
        return False
    return None
