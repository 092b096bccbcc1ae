"""Data-parallel training across processes and machines over MPI (``mpiexec -n N nettrain train``).

``train.batch_size`` is the global batch: every rank trains on its slice of the
same batch, the gradients are summed with one all-reduce per step and every rank
applies the same update, so N ranks train as one process would (see
:mod:`.step`). Only rank 0 writes the run folder and prints.

=============  ==================================================================
``launch``     what mpiexec told this process (environment only, no MPI imported)
``comm``       :class:`Communicator`: the collectives used, over mpi4py
``step``       :class:`DistributedTrainStep`, synced BatchNorm statistics, stops
``evaluation`` :class:`DistributedEvalLoop`: a split sharded across ranks
``trainer``    :class:`DistributedTrainer`: start-up agreement, rank-0 writing
``commands``   ``train``, ``bench`` and ``eval`` as one rank of a job; faults
``supervise``  a watcher per rank that names a rank killed by a signal
=============  ==================================================================

mpi4py and MPICH come with the ``mpi`` extra (``pip install 'nettrain[mpi]'``);
only a process that mpiexec started as one of several imports them.
"""
