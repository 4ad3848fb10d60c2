"""Model rollouts across a fleet (pure): the gates that promote or roll back a candidate version."""
