"""Prompt handling for easel: prompt syntaxes and their translation into Compel syntax.

``easel.prompts.a1111`` translates AUTOMATIC1111 weighting syntax (``(x)``, ``(x:1.3)``, ``[x]``,
``BREAK``) into Compel syntax, because Compel silently misreads A1111 prompts (it turns
``(red cat:1.3)`` into the text "red cat:1 . 3").
"""
