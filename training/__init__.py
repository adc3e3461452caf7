"""Training from packed shards (text SFT and the LLaVA-style model); see the training issue."""
