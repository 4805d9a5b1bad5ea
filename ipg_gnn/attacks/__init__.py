"""Input-space attacks on the target model: ART evasion attacks behind one small interface."""

from ipg_gnn.attacks.evasion import Attack, AttackResult, art_classifier, seed_attack_rng

__all__ = ["Attack", "AttackResult", "art_classifier", "seed_attack_rng"]
