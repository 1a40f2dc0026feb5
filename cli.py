"""
Command-line parsing shared by the scripts: argparse, with a bad flag reported in one line.

argparse prints its whole usage block before the error; a user who typed `--beam-size 1e9` needs only the line that
names the flag (`decode.py: error: argument --beam-size: invalid int value: '1e9'`) and exit status 2, like every
other bad input here. `--help` still prints the usage and the manual.
"""
import argparse


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
