"""Hand-written ES modules and CSS for the anywidget views (installed as losswidget.js)."""
