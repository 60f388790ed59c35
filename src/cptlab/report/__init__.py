"""The HTML report of a study: sections (plug-ins) rendered into one self-contained page."""
