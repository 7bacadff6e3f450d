"""`xt view`: inputs and predictions as a zoomable overlay in the browser (see `server`)."""
