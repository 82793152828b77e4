"""sppdet.proposals: Selective Search, EdgeBoxes, imported proposal files and recall."""
