"""Pictures: heatmap rendering (:mod:`.heatmap`) and the HTML report (:mod:`.report`)."""
