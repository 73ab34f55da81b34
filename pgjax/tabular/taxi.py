"""Taxi (Dietterich, 2000) as a continuing tabular MDP: 500 states, 6 actions.

A 5x5 grid with walls and four stands R, G, Y, B. The taxi must drive to the passenger,
pick them up, drive to their destination and drop them off. States follow the usual
encoding ((row * 5 + col) * 5 + passenger) * 4 + destination, with passenger in 0..3 at a
stand or 4 in the taxi. Actions: 0 south, 1 north, 2 east, 3 west, 4 pickup, 5 dropoff.
Rewards: -1 per step, +20 for a successful drop-off, -10 for an illegal pickup or drop-off.

As in the off-policy evaluation literature (Liu et al., 2018; DualDICE, 2019) the task is
made continuing: a successful drop-off draws the next state from the initial distribution
(a new passenger appears), so J is an infinite-horizon discounted return. The initial
distribution is uniform over taxi cells, stands for the passenger and destinations that
differ from the passenger's stand (300 states).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pgjax.tabular.mdp import MDP, discount_array

TAXI_MAP = (
    "+---------+",
    "|R: | : :G|",
    "| : | : : |",
    "| : : : : |",
    "| | : | : |",
    "|Y| : |B: |",
    "+---------+",
)
TAXI_STANDS = ((0, 0), (0, 4), (4, 0), (4, 3))
TAXI_ACTIONS = ("south", "north", "east", "west", "pickup", "dropoff")
TAXI_NUM_STATES = 500
TAXI_NUM_ACTIONS = 6


def taxi_encode(row: int, col: int, passenger: int, destination: int) -> int:
    """The state index ((row * 5 + col) * 5 + passenger) * 4 + destination in [0, 500) of (taxi row 0..4,
    taxi col 0..4, passenger 0..4 (4: in the taxi), destination 0..3)."""
    return ((row * 5 + col) * 5 + passenger) * 4 + destination


def taxi_decode(state: int) -> tuple[int, int, int, int]:
    """(row, col, passenger, destination) of a state index in [0, 500): the inverse of `taxi_encode`."""
    state, destination = divmod(state, 4)
    state, passenger = divmod(state, 5)
    row, col = divmod(state, 5)
    return row, col, passenger, destination


def _taxi_step(row, col, passenger, destination, action):
    """(next state or None for 'episode done', reward) of one deterministic Taxi step."""
    taxi = (row, col)
    reward = -1.0
    if action == 0:
        row = min(row + 1, 4)
    elif action == 1:
        row = max(row - 1, 0)
    elif action == 2 and TAXI_MAP[1 + row][2 * col + 2] == ":":
        col += 1
    elif action == 3 and TAXI_MAP[1 + row][2 * col] == ":":
        col -= 1
    elif action == 4:
        if passenger < 4 and taxi == TAXI_STANDS[passenger]:
            passenger = 4
        else:
            reward = -10.0
    elif action == 5:
        if passenger == 4 and taxi == TAXI_STANDS[destination]:
            return None, 20.0
        if passenger == 4 and taxi in TAXI_STANDS:
            passenger = TAXI_STANDS.index(taxi)
        else:
            reward = -10.0
    return taxi_encode(row, col, passenger, destination), reward


def taxi_initial_distribution() -> np.ndarray:
    """mu0 [500]: uniform over taxi cells, passenger stands and destinations != passenger stand."""
    mu0 = np.zeros(TAXI_NUM_STATES)
    for row in range(5):
        for col in range(5):
            for passenger in range(4):
                for destination in range(4):
                    if destination != passenger:
                        mu0[taxi_encode(row, col, passenger, destination)] = 1.0
    return mu0 / mu0.sum()


def taxi_mdp(discount: float = 0.99) -> MDP:
    """The continuing Taxi MDP (S = 500, A = 6): transition [500, 6, 500], reward [500, 6] in {-1, 20, -10},
    initial [500] (`taxi_initial_distribution`), discount gamma in (0, 1); see the module docstring."""
    if not 0.0 < discount < 1.0:
        raise ValueError(f"taxi_mdp: discount must be in (0, 1); got {discount}.")
    mu0 = taxi_initial_distribution()
    P = np.zeros((TAXI_NUM_STATES, TAXI_NUM_ACTIONS, TAXI_NUM_STATES))
    R = np.zeros((TAXI_NUM_STATES, TAXI_NUM_ACTIONS))
    for s in range(TAXI_NUM_STATES):
        for a in range(TAXI_NUM_ACTIONS):
            s_next, R[s, a] = _taxi_step(*taxi_decode(s), a)
            if s_next is None:
                P[s, a] = mu0
            else:
                P[s, a, s_next] = 1.0
    dtype = jnp.result_type(float)
    return MDP(jnp.asarray(P, dtype), jnp.asarray(R, dtype), jnp.asarray(mu0, dtype), discount_array(discount, dtype))
