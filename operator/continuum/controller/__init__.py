"""The operator: kopf handlers around the pure core (placement, render)."""
