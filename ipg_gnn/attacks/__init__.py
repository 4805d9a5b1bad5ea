"""Input-space attacks on the target model: ART evasion attacks behind one small interface,
robust accuracy over an ensemble of them, an independent reference PGD, sanity checks, and an
adaptive PGD that fools a detector of adversarial inputs too."""

from ipg_gnn.attacks.adaptive import AdaptivePGD, AdaptiveResult
from ipg_gnn.attacks.evasion import Attack, AttackResult, art_classifier, seed_attack_rng
from ipg_gnn.attacks.reference import ReferencePGD
from ipg_gnn.attacks.robust import RobustReport, robust_accuracy
from ipg_gnn.attacks.sanity import attack_accuracy, sanity_checks

__all__ = [
    "AdaptivePGD",
    "AdaptiveResult",
    "Attack",
    "AttackResult",
    "ReferencePGD",
    "RobustReport",
    "art_classifier",
    "attack_accuracy",
    "robust_accuracy",
    "sanity_checks",
    "seed_attack_rng",
]
