"""Who is in the phantom data set and how far their skeleton has matured.

The age distribution, sex ratio and label noise imitate the RSNA 2017 training set so that
baselines (mean predictor, MAE scale) behave as on the real data. Growth and maturity are
explicit tables and smooth functions so that every anatomical cue is traceable to one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGE_MIN, AGE_MAX = 1.0, 228.0  # months, as in RSNA
MALE_FRACTION = 0.54
LABEL_NOISE_SD = 7.0  # months: the spread between human readers of the same radiograph
FEMALE_MATURITY_FACTOR = 1.13  # girls reach each milestone ~1/1.13 as early (1-2 years in puberty)

# Relative frequency of each 12-month bin (0-12, 12-24, ..., 216-228) in the RSNA training set,
# per sex, smoothed over neighbouring bins (raw labels cluster on whole years).
_AGE_BIN_WEIGHTS = {
    True: (2, 7, 12, 18, 24, 31, 38, 42, 46, 54, 77, 107, 136, 155, 122, 62, 31, 22, 15),
    False: (2, 7, 15, 20, 31, 54, 75, 90, 92, 95, 110, 120, 112, 88, 52, 29, 16, 6, 3),
}

# Hand length (wrist crease to middle fingertip, mm) by age in years: infant growth, a steady
# childhood, the pubertal spurt (earlier in girls) and the adult plateau.
_HAND_LENGTH_MM = {
    True: ((0, 62), (1, 84), (2, 95), (4, 110), (6, 123), (8, 135), (10, 146), (12, 158),
           (13, 166), (14, 175), (15, 182), (16, 187), (17, 190), (19, 191)),
    False: ((0, 60), (1, 82), (2, 93), (4, 108), (6, 121), (8, 133), (10, 145), (11, 152),
            (12, 160), (13, 166), (14, 170), (15, 172), (17, 173), (19, 173)),
}
REFERENCE_HAND_MM = 191.0  # the adult male hand the bone layout is drawn for


@dataclass(frozen=True)
class Subject:
    """One phantom child: the noise-free age drives the anatomy, `label` is what a reader wrote."""

    true_age: float  # months
    male: bool
    label: int  # months, true_age + reader noise, clipped to AGE_MIN..AGE_MAX

    @property
    def maturity(self) -> float:
        return maturity_years(self.true_age, self.male)


def subject_rng(seed: int, image_id: int, stream: int) -> np.random.Generator:
    """An independent random stream per (seed, id, purpose): output never depends on order or workers."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(image_id), int(stream)]))


def sample_age(rng: np.random.Generator, male: bool) -> float:
    weights = np.asarray(_AGE_BIN_WEIGHTS[bool(male)], dtype=float)
    k = rng.choice(len(weights), p=weights / weights.sum())
    return float(np.clip(12.0 * k + 12.0 * rng.random(), AGE_MIN, AGE_MAX))


def sample_subject(seed: int, image_id: int) -> Subject:
    rng = subject_rng(seed, image_id, 0)
    male = bool(rng.random() < MALE_FRACTION)
    age = sample_age(rng, male)
    label = int(round(float(np.clip(age + rng.normal(0.0, LABEL_NOISE_SD), AGE_MIN, AGE_MAX))))
    return Subject(true_age=age, male=male, label=label)


def make_subject(age_months: float, male: bool) -> Subject:
    """A subject with a chosen age (the preview), labelled without noise."""
    age = float(np.clip(age_months, AGE_MIN, AGE_MAX))
    return Subject(true_age=age, male=bool(male), label=int(round(age)))


def maturity_years(age_months: float, male: bool) -> float:
    """Skeletal maturity in 'boy years': milestones (carpals, epiphyses, fusion) are set on this scale."""
    years = age_months / 12.0
    return years if male else years * FEMALE_MATURITY_FACTOR


def hand_length_mm(age_months: float, male: bool) -> float:
    table = np.asarray(_HAND_LENGTH_MM[bool(male)], dtype=float)
    return float(np.interp(age_months / 12.0, table[:, 0], table[:, 1]))


def smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def ramp(m: float, start: float, end: float) -> float:
    """0 before `start`, 1 after `end`, smooth in between."""
    return smoothstep((m - start) / max(end - start, 1e-6))
