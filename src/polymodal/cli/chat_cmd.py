"""``polymodal chat RUN``: an interactive conversation, answers streamed token by token.

Commands inside the chat: ``/image PATH`` and ``/audio PATH`` attach a file to the next message, ``/reset``
starts over, ``/quit`` (or Ctrl-D) leaves.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .generate_cmd import add_generation_options, load_from, options_from, user_turn

HELP = "commands: /image PATH, /audio PATH (attach to the next message), /reset, /quit"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a language model or an instruct run (streams tokens)",
                       description=f"An interactive chat; {HELP}.")
    p.add_argument("run", help="an instruct run folder, or a language model: smollm2, a folder, a hub id")
    add_generation_options(p)
    p.set_defaults(func=run)


def chat_loop(loaded, options, read=None, write=print) -> None:
    """Read messages until /quit or end of input (``read`` default: ``input``)."""
    from ..errors import PolymodalError
    from ..instruct.data import Turn
    from ..instruct.generate import generate

    read = read or (lambda prompt: input(prompt))
    history: list = []
    images: list[Path] = []
    audios: list[Path] = []
    write(HELP)
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            history, images, audios = [], [], []
            write("(conversation reset)")
            continue
        if line.startswith(("/image ", "/audio ")):
            kind, _, path = line.partition(" ")
            file = Path(path.strip()).expanduser()
            if not file.is_file():
                write(f"(no such file: {file})")
                continue
            (images if kind == "/image" else audios).append(file)
            write(f"(attached {file.name} to the next message)")
            continue
        turn = user_turn(line, images, audios)
        images, audios = [], []
        pieces: list[str] = []

        def show(text: str) -> None:
            pieces.append(text)
            write(text, end="", flush=True)

        write("assistant> ", end="", flush=True)
        try:
            answer = generate(loaded, [[*history, turn]], options, on_text=show)[0]
        except PolymodalError as e:
            write(f"(error: {e})")
            continue
        write("")
        history += [turn, Turn("assistant", answer)]


def run(args: argparse.Namespace) -> int:
    loaded = load_from(args)
    chat_loop(loaded, options_from(args, loaded.defaults))
    return 0
