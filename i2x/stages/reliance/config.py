"""Settings of the reliance study: one dataclass the study and its helpers read; it imports none of its siblings."""

from __future__ import annotations

from dataclasses import dataclass

from i2x.settings import device_option, option


@dataclass
class RelianceConfig:
    """Settings of the reliance study (printed in the report and kept in summary.json)."""

    max_samples: int = option(128, "class samples per unit whose cells are deleted", low=1)
    recipients: int = option(128, "held-out images per unit for the paste test", low=1)
    random_draws: int = option(3, "random baselines per intervention", low=1)
    batch_size: int = option(512, "interventions per forward batch", low=1)
    top: int = option(5, "concepts to show in detail", low=1)
    gallery: int = option(8, "images per concept in the report", low=1)
    z_threshold: float = option(3.0, "z (paired, against random) that the paste and the deletion must reach", low=0)
    min_flip_excess: float = option(0.4, "paste flip rate above random patches a shortcut needs: a shortcut decides "
                                    "on its own, while a part of an object (a stroke of a centred digit) moves fewer "
                                    "images", low=0, high=1)
    max_random_flip: float = option(0.25, "random patches flipping more than this make the paste test inconclusive",
                                    low=0, high=1)
    min_lift: float = option(0.5, "lift over chance for its class a concept needs to count as class-tied", low=0,
                             high=1)
    min_concentration: float = option(0.4, "spatial concentration a concept needs to count as fixed in place",
                                      low=0, high=1)
    min_agreement: float = option(0.25, "share of a concept's footprint pixels that other donors' footprints hold too "
                                  "(the same pixels in every image) a concept needs to count as fixed in place", low=0,
                                  high=1)
    min_jaccard: float = option(0.3, "co-presence (Jaccard over samples) that links two prototypes into a concept",
                                low=0, high=1)
    link_concentration: float = option(0.3, "spatial concentration each prototype needs to join a concept", low=0,
                                       high=1)
    max_share: float = option(0.2, "largest share of the grid a concept's hot cells may cover", low=0, high=1,
                              low_open=True)
    field_threshold: float = option(0.5, "share of its maximum at which a receptive field ends (footprint)", low=0,
                                    high=1, low_open=True)
    field_images: int = option(16, "images the receptive fields are averaged over", low=1)
    saliency_threshold: float = option(0.2, "share of its maximum (within the receptive field) at which a unit's "
                                       "saliency, |input gradient x (image - mean image)|, ends (footprint)", low=0,
                                       high=1)
    full_tests: bool = option(False, "run every test on every unit; by default a unit gets the tests in the verdict's "
                              "order and stops at the first it fails (no footprints for a unit that is not class-tied "
                              "or not fixed on the grid, no paste test or deletion when its donors' footprints "
                              "disagree; a test not run reads null): the verdict is the same, faster")
    mask_agreement: float = option(0.3, "share of a concept's footprints (in the samples of its class that hold it) "
                                   "that must hold a pixel for it to be in the concept's mask", low=0, high=1,
                                   low_open=True)
    final_only: bool = option(False, "test the lead concept at the final checkpoint only, not at every checkpoint "
                              "(the report then cannot say when the shortcut formed)")
    seed: int = option(0, "seed of the sample and random draws")
    device: str = device_option()
